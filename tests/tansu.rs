//! The contract suite on tansu, an independent Kafka-compatible broker (written in Rust,
//! not librdkafka's mock): one group member per test. Its 0.6.0 release does not recover a
//! consumer group after a member is killed, so the failover tests stay on the mock cluster.
//! It has no transactions: `courier dlq` reads it, and refuses to write to it.

use courier::contract::failure::FailureKind;
use courier_tests::{
    dlq::{Drill, dead_letter, dlq_total},
    in_place,
    kafka::{KafkaDrill, KafkaHarness},
};

courier::contract_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    KafkaHarness::tansu().await
);

/// `--retry-in-place` keeps a key's order on a broker that is not librdkafka's mock.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_place_keeps_a_key_in_order_while_other_keys_flow() {
    in_place::keeps_a_key_in_order_while_other_keys_flow(KafkaHarness::tansu().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_in_place_that_exhausts_its_tiers_dead_letters_and_the_lane_moves_on() {
    in_place::exhausting_its_tiers_dead_letters_and_the_lane_moves_on(KafkaHarness::tansu().await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_stats_and_show_count_every_record_of_300() {
    let mut drill = KafkaDrill::tansu("tansu-count").await;
    courier_tests::dlq::stats_and_show_count_every_record(&mut drill, 300).await;
}

/// `courier dlq replay` on a broker without transactions stops before it writes anything
/// (not even the ledger topic), with exit code 1 and a message saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dlq_replay_refuses_a_broker_without_transactions_before_writing() {
    let mut drill = KafkaDrill::tansu("tansu-refuse").await;
    let (queue, replies) = (drill.queue().to_owned(), drill.replies().to_owned());
    let dlq = format!("{queue}.dlq");
    let records = (0..6).map(|i| dead_letter(&format!("r-{i}"), &queue, &replies, FailureKind::Transient)).collect();
    drill.publish(&dlq, records).await;
    for command in [&["dlq", "replay"][..], &["dlq", "park"], &["dlq", "purge", "--yes"]] {
        let (code, stdout, stderr) = courier_tests::dlq::courier(&drill, command);
        assert_eq!(code, 1, "{command:?}: {stdout}\n{stderr}");
        assert!(stderr.contains("does not support transactions"), "{command:?}: {stderr}");
    }
    assert!(drill.take(&queue).await.is_empty(), "nothing replayed");
    let written = drill.existing(&[&format!("{dlq}.ledger"), &format!("{queue}.parking")]).await;
    assert!(written.is_empty(), "created {written:?}");
    assert_eq!(dlq_total(&drill, false), 6, "every record still in place");
}

/// Requests of 1,010,000 bytes and of 5 MB reach their outcome and the partition moves on
/// (`support/kafka.rs::oversized_requests`), on a broker that serves 5 MB records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_requests_reach_their_outcome_and_the_partition_moves_on() {
    let bootstrap = std::env::var("COURIER_TEST_TANSU").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (queue, replies) = (format!("large-{id}.requests"), format!("large-{id}.replies"));
    let broker = format!("kafka://{bootstrap}");
    let args = [
        "--broker",
        &broker,
        "--queue",
        &queue,
        "--replies",
        &replies,
        "--partitions",
        "1",
        "--retry-delays=",
        "--kafka-property",
        "fetch.wait.max.ms=10",
    ];
    let mut worker = courier_tests::process::Process::start("greeter", "tansu-large", &args, &[]);
    worker.wait_for_log("Partitions assigned.", std::time::Duration::from_secs(60));
    let mut client = courier_tests::kafka::KafkaClient::new(&bootstrap);
    courier_tests::kafka::oversized_requests(&mut client, &queue, &replies, 1, 5_000_000, || worker.tail()).await;
    assert!(worker.terminate());
}

/// A worker names, at start-up, each topic it writes to that accepts smaller records than
/// it may write (here the reply topic, at 500,000 bytes, and the dead-letter topic, at
/// librdkafka's 1,000,000, under the default limit of 1,114,112), with what happens there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn topics_that_accept_smaller_records_are_named_at_start_up() {
    use courier::transport::kafka::{KafkaConfig, KafkaTransport, Ordering};

    let bootstrap = std::env::var("COURIER_TEST_TANSU").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    let id = &uuid::Uuid::new_v4().simple().to_string()[..10];
    let (queue, replies) = (format!("limits-{id}.requests"), format!("limits-{id}.replies"));
    let transport = KafkaTransport::connect(KafkaConfig {
        partitions: 1,
        ..courier_tests::kafka::config(&bootstrap, Ordering::Partition)
    })
    .await
    .expect("tansu answers");
    let dlq = format!("{queue}.dlq");
    transport.create_topics_with(&[&replies], &[("max.message.bytes", "500000")]).await.expect("replies");
    transport.create_topics_with(&[&dlq], &[("max.message.bytes", "1000000")]).await.expect("dlq");
    let broker = format!("kafka://{bootstrap}");
    let args = ["--broker", &broker, "--queue", &queue, "--replies", &replies, "--partitions", "1"];
    let mut worker = courier_tests::process::Process::start("greeter", "tansu-limits", &args, &[]);
    worker.wait_for_log("Consuming.", std::time::Duration::from_secs(60));
    let log = worker.tail();
    assert!(worker.terminate());
    let named = |topic: &str| log.lines().find(|l| l.contains(&format!("topic {topic} accepts records up to")));
    let reply_warning = named(&replies).unwrap_or_else(|| panic!("no warning about {replies}:\n{log}"));
    assert!(reply_warning.contains("500000 bytes") && reply_warning.contains("reply_too_large"), "{reply_warning}");
    let dlq_warning = named(&dlq).unwrap_or_else(|| panic!("no warning about {dlq}:\n{log}"));
    assert!(dlq_warning.contains("without their payload"), "{dlq_warning}");
    assert!(named(&format!("{queue}.parking")).is_none(), "the parking topic takes the broker's default:\n{log}");
}
