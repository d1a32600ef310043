//! Backlog: how far the consumer is behind the end of each assigned partition, how long
//! its oldest unfinished record has waited ([`Oldest`]), and its lanes held by retries in
//! place.

use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};

use super::{KafkaTransport, METADATA_TIMEOUT, RebalanceContext};
use crate::transport::Backlog;

impl KafkaTransport {
    /// [`Transport::backlog`](crate::transport::Transport::backlog): the lag of every
    /// assigned partition, unknown once the broker stops answering.
    pub(super) async fn lag(&self) -> Vec<Backlog> {
        let consumer = self.shared.consumer.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let shared = Arc::clone(&self.shared);
        let now = tokio::time::Instant::now();
        tokio::task::spawn_blocking(move || {
            // A handle for one broker call at a time, and none once the consumer is closing:
            // its close waits until it holds the last one (`dispatch::close`).
            let handle = || {
                consumer
                    .as_ref()
                    .and_then(std::sync::Weak::upgrade)
                    .filter(|c| !c.context().closing.load(std::sync::atomic::Ordering::Acquire))
            };
            let Some(Ok(positions)) = handle().map(|c| c.position()) else { return Vec::new() };
            let mut answering = true;
            let lag = |consumer: &StreamConsumer<RebalanceContext>,
                       element: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>,
                       unfinished: Option<i64>| {
                let (low, high) =
                    consumer.fetch_watermarks(element.topic(), element.partition(), METADATA_TIMEOUT).ok()?;
                let fetched = element.offset().to_raw().filter(|offset| *offset >= 0);
                let position = unfinished.or(fetched).unwrap_or(low);
                Some(u64::try_from(high - position).unwrap_or(0))
            };
            let elements = positions.elements();
            let mut oldest = shared.oldest.lock().unwrap_or_else(|p| p.into_inner());
            oldest.keep(|(topic, partition)| {
                elements.iter().any(|e| e.topic() == &**topic && e.partition() == *partition)
            });
            let mut backlog = Vec::new();
            for element in elements {
                let partition = (Arc::from(element.topic()), element.partition());
                let Some(consumer) = handle() else { break };
                let (unfinished, held_lanes) = {
                    let tracking = consumer.context().tracking.lock().unwrap_or_else(|p| p.into_inner());
                    let unfinished =
                        tracking.partitions.get(&partition).and_then(|(_, offsets)| offsets.first_unfinished());
                    (unfinished, tracking.held_lanes.get(&partition).copied().unwrap_or(0))
                };
                let lag = if answering { lag(&consumer, &element, unfinished) } else { None };
                answering &= lag.is_some();
                backlog.push(Backlog::Lag {
                    topic: element.topic().to_owned(),
                    partition: element.partition(),
                    lag,
                    oldest_unfinished: oldest.wait(&partition, unfinished, now),
                    held_lanes,
                });
            }
            backlog
        })
        .await
        .unwrap_or_default()
    }
}
