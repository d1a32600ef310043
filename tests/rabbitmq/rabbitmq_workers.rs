//! The greeter binary against the local RabbitMQ: kill -9 mid-load, competing
//! consumers, malformed input from a raw client, an RPC client's exclusive reply queue, a
//! Python producer speaking protobuf.

use courier::{contract::headers as h, testing::Harness};
use courier_tests::{
    outage,
    rabbitmq::{RabbitHarness, RawClient},
    replies::Replies,
};
use lapin::{
    BasicProperties,
    types::{AMQPValue, FieldTable, LongString},
};

use courier_tests::rabbitmq::{CONCURRENCY, PATIENCE, cleanup, greeter, greeter_env, names};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_load_loses_nothing() {
    kill_9_mid_load("kill9", &[]).await;
}

/// The same with batches: the requests of the batches the kill cut short come back, and
/// each ends with a reply.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_batch_loses_nothing() {
    kill_9_mid_load("kill9-batch", &["--batch-size", "32", "--batch-wait", "20ms"]).await;
}

/// 10,000 requests; the first worker killed after 2,000 replies, a second one (`extra`
/// flags for both) answers the rest.
async fn kill_9_mid_load(test: &str, extra: &[&str]) {
    let (queue, replies) = names(test);
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let mut first = greeter(&format!("{test}-a"), &queue, &replies, extra);
    let ids = client.publish_greetings(&queue, &replies, "k", 10_000).await;
    let mut seen = Replies::default();
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |r| r.by_id.len() >= 2_000).await;
    assert!(seen.by_id.len() >= 2_000, "the first worker made progress:\n{}", first.tail());
    first.kill9();
    let answered_before = seen.by_id.len();

    let mut second = greeter(&format!("{test}-b"), &queue, &replies, extra);
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |_| false).await;
    let missing = seen.missing(&ids);
    println!(
        "{test}: kill -9 after {answered_before} replies: {} of {} answered, {} lost, {} duplicates",
        seen.by_id.len(),
        ids.len(),
        missing.len(),
        seen.duplicates()
    );
    assert!(
        missing.is_empty(),
        "lost {} requests, e.g. {:?}\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        second.tail()
    );
    assert!(seen.duplicates() <= CONCURRENCY + 1, "duplicates beyond the in-flight window: {}", seen.duplicates());
    assert!(second.terminate(), "SIGTERM ends the worker cleanly:\n{}", second.tail());
    cleanup(&queue, &replies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_share_one_queue() {
    let (queue, replies) = names("compete");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let mut a = greeter("compete-a", &queue, &replies, &["--concurrency", "4"]);
    let mut b = greeter("compete-b", &queue, &replies, &["--concurrency", "4"]);
    let ids = client.publish_greetings(&queue, &replies, "c", 2_000).await;
    let mut seen = Replies::default();
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |_| false).await;
    assert!(seen.missing(&ids).is_empty());
    println!("competing consumers: {:?}", seen.by_instance);
    for instance in ["compete-a", "compete-b"] {
        let share = seen.by_instance.get(instance).copied().unwrap_or_default();
        assert!(share >= ids.len() / 5, "{instance} handled only {share} of {}", ids.len());
    }
    assert!(a.terminate() && b.terminate());
    cleanup(&queue, &replies).await;
}

/// A request carrying RabbitMQ's sender-selected headers (`CC`, `BCC`: more queues to
/// route a publish to) cannot make the worker copy it elsewhere: its dead-letter copy
/// and its retry copy go to the worker's own queues only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requests_cc_header_does_not_route_the_workers_copies() {
    use lapin::types::FieldArray;
    let (queue, replies) = names("cc");
    let elsewhere = format!("{queue}-elsewhere");
    let client = RawClient::connect().await;
    for name in [&queue, &replies, &elsewhere] {
        client.declare(name).await;
    }
    let switch = outage::Outage::begin(&queue);
    let mut worker = greeter_env(
        "cc",
        &queue,
        &replies,
        &["--retry-delays", "30s", "--retry-attempts", "1", "--breaker", "off"],
        &switch.env(),
    );
    let harness = RabbitHarness::new().await;
    let route =
        AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString(LongString::from(elsewhere.as_bytes()))]));
    for (payload, expect) in
        [(&br#"{"msg": 1}"#[..], format!("{queue}.dlq")), (&br#"{"message":"x"}"#[..], format!("{queue}.retry.30s"))]
    {
        let mut table = FieldTable::default();
        table.insert("CC".into(), route.clone());
        table.insert("BCC".into(), route.clone());
        let properties = BasicProperties::default().with_reply_to(replies.as_str().into()).with_headers(table);
        client.publish(&queue, payload, properties).await;
        let copy = harness.receive(&expect, PATIENCE).await;
        assert!(copy.is_some(), "a copy in {expect}\n{}", worker.tail());
    }
    // The producer's own publishes are routed there by the broker; the worker's copies are not.
    let routed = client.take(&elsewhere).await;
    let copies = routed.iter().filter(|m| m.headers.contains_key(h::FAILURE_KIND)).count();
    println!(
        "CC/BCC on requests: {} requests routed there by their producer, {copies} copies by the worker",
        routed.len() - copies
    );
    assert_eq!(copies, 0, "no copy of the worker reached the queue the request named: {routed:?}");
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    for name in [&elsewhere, &format!("{queue}.retry.30s")] {
        let _ = client.channel.queue_delete(name.as_str().into(), Default::default()).await;
    }
    cleanup(&queue, &replies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_is_dead_lettered_and_the_worker_survives() {
    let (queue, replies) = names("malformed");
    let dlq = format!("{queue}.dlq");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let mut worker = greeter("malformed", &queue, &replies, &[]);
    let harness = RabbitHarness::new().await;

    let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes()));
    let mut garbage = FieldTable::default();
    garbage.insert(h::ATTEMPT.into(), AMQPValue::FieldTable(FieldTable::default()));
    garbage.insert(h::DEADLINE.into(), AMQPValue::LongLongInt(-1));
    let mut bad_attempt = FieldTable::default();
    bad_attempt.insert(h::ATTEMPT.into(), text("zero"));
    let ten_mb = format!(r#"{{"message":"{}"}}"#, "x".repeat(10 * 1024 * 1024));
    let plain = BasicProperties::default;
    let cases: Vec<(&str, Vec<u8>, BasicProperties, &str)> = vec![
        ("not json", b"hello?".to_vec(), plain(), "decode"),
        ("wrong schema", br#"{"msg": 1}"#.to_vec(), plain(), "schema"),
        ("too long a message", format!(r#"{{"message":"{}"}}"#, "y".repeat(1001)).into_bytes(), plain(), "schema"),
        ("10 MB", ten_mb.into_bytes(), plain(), "too-large"),
        ("garbage headers", br#"{"message":"x"}"#.to_vec(), plain().with_headers(garbage), "decode"),
        ("bad attempt header", br#"{"message":"x"}"#.to_vec(), plain().with_headers(bad_attempt), "decode"),
        ("xml content type", br#"{"message":"x"}"#.to_vec(), plain().with_content_type("text/xml".into()), "decode"),
    ];
    for (what, payload, properties, kind) in cases {
        client.publish(&queue, &payload, properties).await;
        let record = harness
            .receive(&dlq, PATIENCE)
            .await
            .unwrap_or_else(|| panic!("{what}: no dead letter\n{}", worker.tail()));
        assert_eq!(record.headers.get(h::FAILURE_KIND).map(String::as_str), Some(kind), "{what}");
        assert_eq!(record.payload.len(), payload.len(), "{what}: payload kept");
        assert!(worker.running(), "{what}: the worker is still running");
    }
    let ids = client.publish_greetings(&queue, &replies, "after", 1).await;
    let mut seen = Replies::default();
    // Error replies for the malformed requests (no correlation id) come first.
    client.collect_replies(&replies, usize::MAX, &mut seen, PATIENCE, |r| r.by_id.contains_key(&ids[0])).await;
    assert!(seen.missing(&ids).is_empty(), "still serving after malformed input\n{}", worker.tail());
    assert!(worker.terminate());
    cleanup(&queue, &replies).await;
}

/// The usual RPC client: its reply queue is exclusive to its own connection, so the
/// worker's passive declare of it fails with 405 RESOURCE_LOCKED, yet publishing to it
/// works. Each request is answered once, never requeued as "broker unavailable".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exclusive_reply_queue_gets_its_replies() {
    let (queue, replies) = names("exclusive");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let mine = format!("{}.replies", uuid::Uuid::new_v4().simple());
    let options = lapin::options::QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
    client.channel.queue_declare(mine.as_str().into(), options, FieldTable::default()).await.expect("exclusive");
    let port = courier_tests::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut worker = greeter("exclusive", &queue, &replies, &["--http-addr", &addr]);
    let ids = client.publish_greetings(&queue, &mine, "x", 20).await;
    let mut seen = Replies::default();
    client.collect_replies(&mine, ids.len(), &mut seen, PATIENCE, |_| false).await;
    assert!(seen.missing(&ids).is_empty(), "{} unanswered\n{}", seen.missing(&ids).len(), worker.tail());
    assert_eq!(seen.duplicates(), 0);
    let (_, metrics) = courier_tests::http::get(port, "/metrics").await;
    let received = courier_tests::http::metric(&metrics, r#"courier_messages_received_total{worker="greeter"}"#);
    assert_eq!(received, 20.0, "each request handled once, none requeued\n{}", worker.tail());
    assert!(worker.terminate());
    cleanup(&queue, &replies).await;
}

/// `--quorum`: a request that keeps coming back without an outcome (as from a worker that
/// crash-loops on it) is dead-lettered by the broker into the dead-letter queue after 20
/// deliveries, instead of looping forever (RabbitMQ 3.x) or vanishing (4.x, whose default
/// limit drops it when no target is set); `courier dlq replay` sends it back to its queue
/// (from the broker's `x-first-death-queue`) and it is answered. The dead-letter queue's
/// own limit is out of reach of readers that return what they read (25 `courier dlq
/// stats` leave the record in place).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_requests_that_keep_coming_back_end_in_the_dead_letter_queue() {
    use lapin::options::{BasicGetOptions, BasicNackOptions};
    let (queue, replies) = names("quorum");
    let dlq = format!("{queue}.dlq");
    let client = RawClient::connect().await;
    // The worker declares its quorum topology (the reply queue too), then goes away: the raw client plays a
    // worker that dies on the request every time.
    let mut worker = greeter("quorum-a", &queue, &replies, &["--quorum"]);
    assert!(worker.terminate());
    client.publish_greetings(&queue, &replies, "q", 1).await;
    let mut deliveries = 0;
    while let Some(got) =
        client.channel.basic_get(queue.as_str().into(), BasicGetOptions::default()).await.expect("get")
    {
        deliveries += 1;
        assert!(deliveries <= 25, "the broker keeps delivering it");
        got.delivery.nack(BasicNackOptions { requeue: true, ..Default::default() }).await.expect("nack");
    }
    assert_eq!(deliveries, 21, "delivered 1 + 20 times, then dead-lettered");
    let harness = RabbitHarness::new().await;
    let record = harness.receive(&dlq, PATIENCE).await.expect("the request in the dead-letter queue");
    assert_eq!(record.headers.get(h::X_FIRST_DEATH_REASON).map(String::as_str), Some("delivery_limit"));
    assert_eq!(record.headers.get(h::X_FIRST_DEATH_QUEUE), Some(&queue));
    // Back in the queue for the replay below.
    client.publish(&dlq, &record.payload, courier::transport::amqp::properties(&record)).await;

    let listed = std::process::Command::new("rabbitmqctl")
        .args(["-q", "list_queues", "name", "arguments"])
        .output()
        .expect("rabbitmqctl list_queues");
    let listed = String::from_utf8_lossy(&listed.stdout);
    let line = listed.lines().find(|l| l.starts_with(&format!("{dlq}\t"))).expect("the dead-letter queue is listed");
    assert!(line.contains("x-delivery-limit") && line.contains("1000000000"), "{line}");

    let url = courier_tests::rabbitmq::url();
    // Reading returns what it read, and each return is a delivery of a quorum queue:
    // 25 reads (RabbitMQ 4 drops past 20 without the queue's own limit) leave it in place.
    let stats: Vec<String> = ["dlq", "stats", "--json", "--worker", "greeter", "--broker", &url, "--queue", &queue]
        .map(String::from)
        .to_vec();
    for _ in 0..25 {
        let (code, stdout, stderr) = courier_tests::process::courier(&stats);
        assert_eq!(code, 0, "{stdout}\n{stderr}");
        let stats: serde_json::Value = serde_json::from_str(&stdout).expect("stats JSON");
        assert_eq!(stats["total"], 1, "{stdout}");
    }
    let args: Vec<String> =
        ["dlq", "replay", "--worker", "greeter", "--broker", &url, "--queue", &queue, "--replies", &replies]
            .map(String::from)
            .to_vec();
    let (code, stdout, stderr) = courier_tests::process::courier(&args);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let mut worker = greeter("quorum-b", &queue, &replies, &["--quorum"]);
    let mut seen = Replies::default();
    client.collect_replies(&replies, 1, &mut seen, PATIENCE, |_| false).await;
    assert_eq!(seen.by_id.get("q-0"), Some(&1), "answered after the replay\n{}", worker.tail());
    assert!(worker.terminate());
    cleanup(&queue, &replies).await;
}

/// A dead-letter copy keeps the request's headers in their AMQP types (an integer, a
/// boolean, a table stay what they were), and an AMQP timestamp works as a deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_copies_keep_amqp_header_types() {
    use lapin::options::BasicGetOptions;
    let (queue, replies) = names("typed");
    let dlq = format!("{queue}.dlq");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let mut worker = greeter("typed", &queue, &replies, &[]);
    let mut nested = FieldTable::default();
    nested.insert("a".into(), AMQPValue::LongInt(1));
    let mut typed = FieldTable::default();
    typed.insert("x-order".into(), AMQPValue::LongLongInt(42));
    typed.insert("x-urgent".into(), AMQPValue::Boolean(true));
    typed.insert("x-meta".into(), AMQPValue::FieldTable(nested.clone()));
    let properties = BasicProperties::default().with_reply_to(replies.as_str().into()).with_headers(typed.clone());
    client.publish(&queue, br#"{"message":""}"#, properties).await;
    let mut expired = FieldTable::default();
    expired.insert(h::DEADLINE.into(), AMQPValue::Timestamp(1_000_000_000));
    let properties = BasicProperties::default().with_reply_to(replies.as_str().into()).with_headers(expired);
    client.publish(&queue, br#"{"message":"late"}"#, properties).await;

    let mut records = Vec::new();
    let deadline = std::time::Instant::now() + PATIENCE;
    while records.len() < 2 {
        assert!(std::time::Instant::now() < deadline, "dead letters\n{}", worker.tail());
        match client.channel.basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: true }).await.expect("get") {
            Some(got) => records.push(got.delivery.properties.headers().clone().unwrap_or_default()),
            None => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
        }
    }
    let kind = |table: &FieldTable| match table.inner().get(h::FAILURE_KIND) {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        other => format!("{other:?}"),
    };
    let permanent = records.iter().find(|t| kind(t) == "permanent").expect("the permanent failure");
    for (name, value) in typed.inner() {
        assert_eq!(permanent.inner().get(name), Some(value), "{name} keeps its type");
    }
    assert!(records.iter().any(|t| kind(t) == "expired"), "a timestamp deadline: {records:?}");
    assert!(worker.terminate());
    cleanup(&queue, &replies).await;
}

/// The circuit breaker's outage drill: the greeter's dependency is down while 2,000
/// requests arrive, then up. With the breaker, the backlog waits in the queue: nothing is
/// dead-lettered, the retry tiers see only the rounds before it opened and the probes,
/// and every request is answered once the dependency is back. Without it, requests burn
/// through their retries into the dead-letter queue.
/// With the inbox, a request sent twice with one `courier-message-id` (a producer's retry)
/// runs the handler once: the second is answered from the inbox with the same payload,
/// and the metric counts it. A request without a message id is not deduplicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repeated_message_id_is_answered_from_the_inbox() {
    let (queue, replies) = names("inbox");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let port = courier_tests::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    let inbox = courier_tests::postgres::url();
    let mut worker = greeter("inbox", &queue, &replies, &["--inbox", &inbox, "--http-addr", &addr]);
    let id = format!("{queue}-once");
    for correlation in ["first", "again"] {
        let properties = BasicProperties::default()
            .with_message_id(id.as_str().into())
            .with_correlation_id(correlation.into())
            .with_reply_to(replies.as_str().into());
        client.publish(&queue, br#"{"message":"Ada"}"#, properties).await;
    }
    let mut seen = Replies::default();
    client.collect_replies(&replies, 2, &mut seen, PATIENCE, |_| false).await;
    courier_tests::postgres::assert_answered_once_then_from_the_inbox(port, &seen, || worker.tail()).await;
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    cleanup(&queue, &replies).await;
}

/// A Python producer with code generated from `greeter.proto` gets its replies in
/// protobuf, and its refusals in the protobuf error envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_protobuf_producer_is_answered_in_protobuf() {
    let (queue, replies) = names("protobuf");
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let mut worker = greeter("protobuf", &queue, &replies, &[]);
    let url = courier_tests::rabbitmq::url();
    courier_tests::python::protobuf_client_is_answered(&["amqp", &url, &queue, &replies], || worker.tail());
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    cleanup(&queue, &replies).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dependency_outage_with_and_without_the_breaker() {
    let on = outage_drill(true).await;
    let off = outage_drill(false).await;
    outage::print_table("RabbitMQ outage drill", OUTAGE, &[&on, &off]);
    assert_eq!(
        (on.lost, on.ok - on.duplicates, on.dead_lettered),
        (0, on.requests, 0.0),
        "breaker on: every request ok, none dead-lettered"
    );
    assert!(on.tier_traffic < 50.0, "breaker on: {} retry-tier copies", on.tier_traffic);
    assert!(on.given_back > 0.0, "breaker on: deliveries in hand went back to the queue");
    assert_eq!(off.lost, 0, "breaker off: every request answered");
    assert!(off.dead_lettered > 0.0, "breaker off: the outage outlasts the retry tiers");
}

/// How long the drill's dependency is down.
const OUTAGE: std::time::Duration = std::time::Duration::from_secs(10);

async fn outage_drill(breaker: bool) -> outage::Figures {
    let name = if breaker { "breaker-on" } else { "breaker-off" };
    let (queue, replies) = names(name);
    let client = RawClient::connect().await;
    client.declare(&queue).await;
    client.declare(&replies).await;
    let switch = outage::Outage::begin(&queue);
    let port = courier_tests::http::free_port();
    let addr = format!("127.0.0.1:{port}");
    // One handler call per round, so that without the breaker the rounds run at the
    // broker's pace and the outage outlasts every tier.
    let mut flags = vec!["--retry-attempts", "1", "--retry-delays", "2s", "--http-addr", &addr];
    if breaker {
        flags.extend(["--breaker-cooldown", "1s", "--breaker-max-cooldown", "4s"]);
    } else {
        flags.extend(["--breaker", "off"]);
    }
    let mut worker = greeter_env(name, &queue, &replies, &flags, &switch.env());
    let ids = client.publish_greetings(&queue, &replies, name, 2_000).await;
    tokio::time::sleep(OUTAGE).await;
    let (ready, _) = courier_tests::http::get(port, "/readyz").await;
    assert_eq!(ready, 200, "{name}: ready during the outage (its dependency is down, not the worker)");
    let during = courier_tests::http::get(port, "/metrics").await.1;
    let state =
        courier_tests::http::metric(&during, r#"courier_breaker_state{dependency="greetings",worker="greeter"}"#);
    // Open, or half-open for the moment a probe takes (absent, so 0, when off).
    assert_eq!(state >= 1.0, breaker, "{name}: the breaker's state during the outage is {state}");
    switch.end();
    let recovered = std::time::Instant::now();
    let mut seen = Replies::default();
    client.collect_replies(&replies, ids.len(), &mut seen, PATIENCE, |_| false).await;
    let drain = recovered.elapsed();
    let metrics = courier_tests::http::get(port, "/metrics").await.1;
    assert!(worker.terminate(), "SIGTERM ends the worker cleanly:\n{}", worker.tail());
    cleanup(&queue, &replies).await;
    RabbitHarness::new().await.delete(&[format!("{queue}.retry.2s")]).await;
    outage::Figures::new(name, &ids, &metrics, &seen, drain)
}
