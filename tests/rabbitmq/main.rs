//! Tests that share the local RabbitMQ without disturbing it (each test has queues of its
//! own): the contract suite, real greeter, gateway and `courier` processes, a real
//! Prometheus and Alertmanager. Tests that stop the broker, close its connections or fill its memory have
//! binaries of their own. One binary: each file is a module
//! (`cargo test -p courier-tests --test rabbitmq rabbitmq_workers::`).

mod alert_drill;
mod console_rabbitmq;
mod dlq_rabbitmq;
mod gateway;
mod inbox_trust;
mod observability;
mod rabbitmq_suite;
mod rabbitmq_workers;
mod topology;
