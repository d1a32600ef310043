//! Backlog: how far the consumer is behind the end of each assigned partition.

use std::sync::Arc;

use rdkafka::consumer::{Consumer, StreamConsumer};

use super::{KafkaTransport, METADATA_TIMEOUT, RebalanceContext};
use crate::transport::Backlog;

impl KafkaTransport {
    /// [`Transport::backlog`](crate::transport::Transport::backlog): the lag of every
    /// assigned partition, unknown once the broker stops answering.
    pub(super) async fn lag(&self) -> Vec<Backlog> {
        let consumer = self.shared.consumer.lock().unwrap_or_else(|p| p.into_inner()).clone();
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
                       element: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>| {
                let (low, high) =
                    consumer.fetch_watermarks(element.topic(), element.partition(), METADATA_TIMEOUT).ok()?;
                let unfinished = {
                    let tracking = consumer.context().tracking.lock().unwrap_or_else(|p| p.into_inner());
                    let key = (Arc::from(element.topic()), element.partition());
                    tracking.partitions.get(&key).and_then(|(_, offsets)| offsets.first_unfinished())
                };
                let fetched = element.offset().to_raw().filter(|offset| *offset >= 0);
                let position = unfinished.or(fetched).unwrap_or(low);
                Some(u64::try_from(high - position).unwrap_or(0))
            };
            let mut backlog = Vec::new();
            for element in positions.elements() {
                let lag = match handle() {
                    Some(consumer) if answering => lag(&consumer, &element),
                    _ => None,
                };
                answering &= lag.is_some();
                backlog.push(Backlog::Lag { topic: element.topic().to_owned(), partition: element.partition(), lag });
            }
            backlog
        })
        .await
        .unwrap_or_default()
    }
}
