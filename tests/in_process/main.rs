//! Tests that start no broker process: the in-memory broker, librdkafka's mock cluster
//! inside the test process, the demo's console, the AsyncAPI documents. One binary: each
//! file is a module (`cargo test -p courier-tests --test in_process memory::`).

mod asyncapi;
mod demo;
mod kafka_ordering;
mod kafka_suite;
mod memory;
