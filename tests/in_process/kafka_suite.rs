//! The contract suite on Kafka: librdkafka's mock cluster, a real Kafka-protocol broker.

use courier_tests::kafka::KafkaHarness;

courier::contract_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    KafkaHarness::mock().await
);
