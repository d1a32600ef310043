//! The contract suite on the local RabbitMQ (real time, real broker).

use courier_tests::rabbitmq::RabbitHarness;

courier::contract_suite!(
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    RabbitHarness::new().await
);
