//! The broker a `--broker` URL names, with its clients sized by the worker's limits.

use super::{BrokerArgs, ConfigError, DEFAULT_MAX_IN_FLIGHT_BYTES, DEFAULT_MAX_PAYLOAD_BYTES, invalid};
#[cfg(feature = "kafka")]
use crate::transport::kafka::{KafkaConfig, Ordering};
use crate::{broker::Broker, transport::redact};

/// The URL schemes `--broker` takes in this build.
const SCHEMES: &[&str] = &[
    #[cfg(feature = "amqp")]
    "amqp://",
    #[cfg(feature = "amqp")]
    "amqps://",
    #[cfg(feature = "kafka")]
    "kafka://",
    "memory://",
];

#[cfg(feature = "amqp")]
fn is_amqp(url: &str) -> bool {
    url.starts_with("amqp://") || url.starts_with("amqps://")
}

impl BrokerArgs {
    /// The broker `--broker` names, with the Kafka flags where it is Kafka; `worker` names
    /// the default consumer group.
    pub(crate) fn resolve(&self, worker: &str, limits: &ClientLimits) -> Result<Broker, ConfigError> {
        let _ = (worker, limits);
        Ok(match self.broker.as_deref().map(str::trim) {
            None | Some("") | Some("memory://") | Some("memory") => Broker::Memory,
            #[cfg(feature = "amqp")]
            Some(url) if is_amqp(url) => {
                if let Some(other) = url.split(',').find(|u| !is_amqp(u.trim())) {
                    return Err(invalid(
                        "broker",
                        format!("{:?} in the list is not an amqp:// or amqps:// URL", redact(other.trim())),
                    ));
                }
                Broker::Amqp(url.to_owned())
            }
            #[cfg(feature = "kafka")]
            Some(url) if url.starts_with("kafka://") => {
                let bootstrap = url.trim_start_matches("kafka://").trim_end_matches('/');
                if bootstrap.is_empty() {
                    return Err(invalid("broker", "kafka:// needs host:port"));
                }
                if self.partitions < 1 || self.replication < 1 {
                    return Err(invalid("partitions", "partitions and replication must be at least 1"));
                }
                Broker::Kafka(KafkaConfig {
                    bootstrap: bootstrap.to_owned(),
                    group: self.group.clone().unwrap_or_else(|| format!("courier-{worker}")),
                    ordering: limits.ordering,
                    partitions: self.partitions,
                    replication: self.replication,
                    max_message_bytes: KafkaConfig::max_message_bytes_for(limits.max_payload_bytes),
                    buffer_bytes: limits.max_in_flight_bytes,
                    properties: self.kafka_properties.clone(),
                })
            }
            Some(url) => {
                return Err(invalid("broker", format!("unsupported URL {}: use {}", redact(url), SCHEMES.join(", "))));
            }
        })
    }
}

/// What a broker client takes from a worker's processing flags; other binaries use the
/// workers' defaults.
#[derive(Clone, Copy, Debug)]
#[cfg_attr(not(feature = "kafka"), allow(dead_code, reason = "only Kafka's clients are sized by them"))]
pub(crate) struct ClientLimits {
    /// `--max-payload-bytes`: Kafka's producer takes records up to it plus headers.
    pub max_payload_bytes: usize,
    /// `--max-in-flight-bytes`: bounds Kafka's read-ahead and producer buffers.
    pub max_in_flight_bytes: usize,
    /// `--ordering` (Kafka).
    #[cfg(feature = "kafka")]
    pub ordering: Ordering,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
            max_in_flight_bytes: DEFAULT_MAX_IN_FLIGHT_BYTES,
            #[cfg(feature = "kafka")]
            ordering: Ordering::default(),
        }
    }
}

#[cfg(all(test, feature = "amqp", feature = "kafka"))]
mod tests {
    use clap::Parser;

    use super::*;
    use crate::config::{WorkerArgs, parse};

    #[test]
    fn kafka_urls_and_properties() {
        let s = parse(&[
            "--broker",
            "kafka://a:9092,b:9092",
            "--kafka-property",
            "fetch.wait.max.ms=10",
            "--ordering",
            "key",
        ])
        .expect("valid");
        let Broker::Kafka(config) = s.broker else { panic!("kafka") };
        assert_eq!(config.bootstrap, "a:9092,b:9092");
        assert_eq!(config.group, "courier-greeter");
        assert_eq!(config.ordering, crate::transport::kafka::Ordering::Key);
        assert_eq!(config.properties, vec![("fetch.wait.max.ms".to_owned(), "10".to_owned())]);
        assert!(parse(&["--broker", "kafka://"]).is_err());
        let mut argv = vec!["greeter", "--kafka-property", "novalue"];
        assert!(WorkerArgs::try_parse_from(argv.drain(..)).is_err());
    }

    #[test]
    fn passwords_are_redacted_in_errors() {
        let err = parse(&["--broker", "amqp://u:pw@h1,kafka://u:pw2@h2"]).expect_err("a list of amqp URLs").to_string();
        assert!(err.contains("kafka://u:***@h2") && !err.contains("pw"), "{err}");
        let err = parse(&["--broker", "nats://u:pw@h"]).expect_err("unsupported").to_string();
        assert!(!err.contains("pw"), "{err}");
    }
}
