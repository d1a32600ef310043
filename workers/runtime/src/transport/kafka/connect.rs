//! Start-up: create the producer every clone shares and check that the cluster answers.

use std::sync::{Arc, Mutex, RwLock, atomic::AtomicBool};

use rdkafka::producer::{FutureProducer, Producer};
use tracing::info;

use super::{
    KafkaConfig, KafkaTransport, METADATA_TIMEOUT, Shared, client_config, config::RECONNECT_BACKOFF_MAX_MS, failed,
};
use crate::transport::TransportError;

impl KafkaTransport {
    /// Create the producer and check that the cluster answers.
    pub async fn connect(config: KafkaConfig) -> Result<Self, TransportError> {
        let max_message_bytes = config.max_message_bytes.to_string();
        let producer_queue = config.producer_queue_kbytes();
        let producer: FutureProducer = client_config(
            &config,
            &[
                ("message.max.bytes", &max_message_bytes),
                ("queue.buffering.max.kbytes", &producer_queue),
                ("enable.idempotence", "true"),
                ("acks", "all"),
                ("allow.auto.create.topics", "false"),
                ("message.timeout.ms", "30000"),
                ("linger.ms", "1"),
                ("reconnect.backoff.max.ms", RECONNECT_BACKOFF_MAX_MS),
            ],
        )
        .create()
        .map_err(failed)?;
        let transport = Self {
            shared: Arc::new(Shared {
                config,
                producer,
                known_topics: RwLock::default(),
                lookup: tokio::sync::Mutex::new(()),
                consumer: Mutex::new(None),
                liveness: Mutex::new(None),
                fatal: AtomicBool::new(false),
                oldest: Default::default(),
                dead_letter_depth: Default::default(),
            }),
        };
        let producer = transport.shared.producer.clone();
        tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, METADATA_TIMEOUT))
            .await
            .map_err(TransportError::broker)?
            .map_err(|e| failed(e).context(transport.shared.config.bootstrap.clone()))?;
        info!(bootstrap = %transport.shared.config.bootstrap, "Connected to Kafka.");
        Ok(transport)
    }

    /// The configuration this transport was created with.
    pub fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }
}
