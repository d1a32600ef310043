//! Shared support for the black-box tests: broker harnesses for the contract suite,
//! raw broker clients, and helpers that run the real worker binaries.

pub mod alerting;
pub mod browser;
pub mod console;
pub mod dlq;
pub mod http;
pub mod in_place;
pub mod kafka;
pub mod measure;
pub mod mix;
pub mod outage;
pub mod postgres;
pub mod process;
pub mod python;
pub mod rabbitmq;
pub mod rabbitmq_cluster;
pub mod replies;
