//! `courier dlq` on Kafka (the mock cluster in a process of its own), with the real
//! greeter and CLI processes.

courier_tests::dlq_drills!(courier_tests::kafka::KafkaDrill::new("dlq_kafka"));
