//! Real greeter and `courier` processes on librdkafka's mock cluster, hosted in a process
//! of its own (`mock-kafka`), one cluster per test. One binary: each file is a module
//! (`cargo test -p courier-tests --test kafka_mock kafka_cluster::`).

mod console_kafka;
mod dlq_kafka;
mod kafka_backlog;
mod kafka_cluster;
mod kafka_rebalance;
mod kafka_workers;
