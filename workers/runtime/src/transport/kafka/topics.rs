//! Topics: whether one exists (cached, for the unroutable check before a publish), their
//! partition counts, creating the missing ones, and declaring a worker's topology.

use std::{collections::HashMap, time::Duration};

use rdkafka::{
    admin::{AdminClient, AdminOptions, NewTopic, TopicReplication},
    client::DefaultClientContext,
    error::{KafkaError, RDKafkaErrorCode},
    producer::Producer,
};

use super::{KafkaTransport, METADATA_TIMEOUT, client_config, failed, topic_limits};
use crate::{
    contract::naming,
    transport::{BrokerError, PublishError, Topology, TransportError},
};

/// How long topic creation may take before start-up (or `courier topology declare`) fails.
const CREATE_TIMEOUT: Duration = Duration::from_secs(10);

impl KafkaTransport {
    /// Whether `topic` exists (cached once seen; a missing one is asked again after a second).
    pub(crate) async fn topic_exists(&self, topic: &str) -> Result<bool, PublishError> {
        match self.known_topic(topic) {
            Some(exists) => Ok(exists),
            // Boxed: the broker is asked once per topic, and this future is part of every send's.
            None => Box::pin(self.look_up_topic(topic)).await,
        }
    }

    /// What the cache says of `topic` (only names that passed the check below are in it).
    fn known_topic(&self, topic: &str) -> Option<bool> {
        self.shared.known_topics.read().unwrap_or_else(|p| p.into_inner()).get(topic)
    }

    /// Ask the broker whether `topic` exists, and remember.
    async fn look_up_topic(&self, topic: &str) -> Result<bool, PublishError> {
        let known = || self.known_topic(topic);
        if let Some(reason) = naming::kafka_topic_problem(topic) {
            return Err(PublishError::invalid_name(topic, reason));
        }
        let _lookup = self.shared.lookup.lock().await;
        if let Some(exists) = known() {
            return Ok(exists);
        }
        let producer = self.shared.producer.clone();
        let name = topic.to_owned();
        let metadata =
            tokio::task::spawn_blocking(move || producer.client().fetch_metadata(Some(&name), METADATA_TIMEOUT))
                .await
                .map_err(TransportError::broker)?
                .map_err(failed)?;
        let exists =
            metadata.topics().iter().any(|t| t.name() == topic && t.error().is_none() && !t.partitions().is_empty());
        self.shared.known_topics.write().unwrap_or_else(|p| p.into_inner()).set(topic, exists);
        Ok(exists)
    }

    /// Partition counts of the topics that exist among `names`.
    pub async fn partition_counts(&self, names: &[&str]) -> Result<HashMap<String, usize>, TransportError> {
        let producer = self.shared.producer.clone();
        let metadata = tokio::task::spawn_blocking(move || producer.client().fetch_metadata(None, METADATA_TIMEOUT))
            .await
            .map_err(TransportError::broker)?
            .map_err(failed)?;
        Ok(metadata
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && names.contains(&t.name()))
            .map(|t| (t.name().to_owned(), t.partitions().len()))
            .collect())
    }

    /// Create those of `names` that do not exist yet, with the configured partitions and
    /// replication.
    pub async fn create_topics(&self, names: &[&str]) -> Result<(), TransportError> {
        self.create_topics_with(names, &[]).await
    }

    /// [`Self::create_topics`] with topic configuration (`cleanup.policy=compact`, …).
    pub async fn create_topics_with(&self, names: &[&str], config: &[(&str, &str)]) -> Result<(), TransportError> {
        let existing = self.partition_counts(names).await?;
        let mut names: Vec<&str> = names.iter().copied().filter(|n| !existing.contains_key(*n)).collect();
        names.sort_unstable();
        names.dedup();
        if names.is_empty() {
            return Ok(());
        }
        let admin: AdminClient<DefaultClientContext> =
            client_config(&self.shared.config, &[]).create().map_err(failed)?;
        let (partitions, replication) = (self.shared.config.partitions, self.shared.config.replication);
        let topics: Vec<NewTopic<'_>> = names
            .iter()
            .map(|n| {
                config
                    .iter()
                    .fold(NewTopic::new(n, partitions, TopicReplication::Fixed(replication)), |topic, (k, v)| {
                        topic.set(k, v)
                    })
            })
            .collect();
        let options =
            AdminOptions::new().operation_timeout(Some(METADATA_TIMEOUT)).request_timeout(Some(CREATE_TIMEOUT));
        // librdkafka's own request timeout is not always kept (seen: a broker that never
        // answers CreateTopics held the call for over a minute): a bound of our own too.
        let no_answer = || {
            TransportError::Unavailable(BrokerError::said(format!(
                "the broker did not answer CreateTopics for {} within {CREATE_TIMEOUT:?}: create the topics ahead \
                 of time (with the broker's own tools) and check the broker",
                names.join(", ")
            )))
        };
        let results =
            tokio::time::timeout(CREATE_TIMEOUT + Duration::from_secs(1), admin.create_topics(&topics, &options))
                .await
                .map_err(|_| no_answer())?
                .map_err(|e| match e {
                    KafkaError::AdminOp(RDKafkaErrorCode::OperationTimedOut | RDKafkaErrorCode::RequestTimedOut) => {
                        no_answer()
                    }
                    e => failed(e),
                })?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(TransportError::broker(code).context(format!("creating topic {topic}")));
                }
            }
        }
        Ok(())
    }

    /// [`Transport::declare`](crate::transport::Transport::declare): the topology's topics,
    /// created if missing, with dead-letter and parking topics no narrower than their source.
    pub(super) async fn declare_topics(&self, topology: &Topology) -> Result<(), TransportError> {
        let mut names = vec![topology.queue.as_str(), &topology.dead_letter, &topology.parking, &topology.replies];
        names.extend(topology.retry_tiers.iter().map(|t| t.name.as_str()));
        self.create_topics(&names).await?;
        // Dead letters keep their source partition count, so per-partition order survives.
        let counts = self.partition_counts(&names).await?;
        let source = counts.get(&topology.queue).copied().unwrap_or_default();
        for name in [&topology.dead_letter, &topology.parking] {
            let count = counts.get(name).copied().unwrap_or_default();
            if count < source {
                return Err(TransportError::TopologyMismatch(format!(
                    "topic {name} has {count} partitions, fewer than its source {} ({source})",
                    topology.queue
                )));
            }
        }
        topic_limits::check(&self.shared.config, topology).await;
        Ok(())
    }
}
