//! The contract suite on tansu, an independent Kafka-compatible broker (written in Rust,
//! not librdkafka's mock): one group member per test. Its 0.6.0 release does not recover a
//! consumer group after a member is killed, so the failover tests stay on the mock cluster.

use courier_tests::kafka::KafkaHarness;

courier::contract_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    KafkaHarness::tansu().await
);
