//! Rebalances: the per-partition offset tracking each assignment starts afresh, and the
//! consumer callbacks that keep it (and readiness) in step with the group.

use std::sync::{Arc, Mutex};

use rdkafka::{
    ClientContext,
    consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, RebalanceProtocol},
    error::RDKafkaErrorCode,
};
use tracing::{info, warn};

use super::{liveness, offsets};

/// Per-partition offset tracking, owned by the dispatcher's task: its loop, the rebalance
/// callbacks (served inside its `recv`) and, every few seconds, the lag sampler lock it;
/// ackers only send the dispatcher their record. Each assignment of a partition gets a new
/// epoch, so work from before a revocation never stores offsets for the new assignment.
/// Hashed with foldhash: std's SipHash of the topic name was most of each lookup's cost.
#[derive(Debug, Default)]
pub(crate) struct Tracking {
    /// (topic, partition) → (epoch, offsets in flight).
    pub(crate) partitions: foldhash::HashMap<(Arc<str>, i32), (u64, offsets::PartitionOffsets)>,
    /// Last epoch handed out.
    pub(crate) epoch: u64,
    /// Ordering lanes held by a record retrying in place, per partition that has any
    /// (kept by the dispatcher, read by the lag sampler).
    pub(crate) held_lanes: foldhash::HashMap<(Arc<str>, i32), usize>,
}

/// Consumer callbacks: on revocation, forget the revoked partitions' in-flight work
/// (the new owner redoes it) and commit what is finished. With the cooperative protocol
/// both callbacks carry only the partitions that move (an assignment may be empty): the
/// partitions kept keep their epoch and their offsets in flight.
#[derive(Default)]
pub(super) struct RebalanceContext {
    /// The offsets in flight, shared with the dispatcher and the lag sampler.
    pub(super) tracking: Arc<Mutex<Tracking>>,
    /// Assignment and broker state, for readiness.
    pub(super) liveness: Arc<liveness::Liveness>,
    /// Set when the dispatcher starts closing the consumer: the lag sampler then takes no
    /// more handles of it, so the close waits for one broker call of the sampler at most.
    pub(super) closing: std::sync::atomic::AtomicBool,
}

impl ClientContext for RebalanceContext {
    fn stats_raw(&self, statistics: &[u8]) {
        self.liveness.statistics(statistics);
    }
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(revoked) = rebalance {
            let lost = consumer.assignment_lost();
            // Eager: every partition goes and the member rejoins, unready until assigned
            // again. Cooperative: only the moving partitions go; the member stays in its
            // group with the rest, ready, unless it was dropped from the group.
            if lost || !matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative) {
                self.liveness.set_assigned(false);
            }
            let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            for element in revoked.elements() {
                let partition = (Arc::from(element.topic()), element.partition());
                tracking.partitions.remove(&partition);
                tracking.held_lanes.remove(&partition);
            }
            let held = tracking.partitions.len();
            drop(tracking);
            if let Err(error) = consumer.commit_consumer_state(CommitMode::Sync) {
                // Nothing stored yet is a normal case, not a problem.
                if error.rdkafka_error_code() != Some(RDKafkaErrorCode::NoOffset) {
                    warn!(%error, "Could not commit before the rebalance.");
                }
            }
            if lost {
                // The group moved on without this member (it missed a rebalance or a heartbeat).
                warn!(partitions = %listed(revoked), "Partitions lost: this member was dropped from the group.");
            } else {
                info!(partitions = %listed(revoked), held, "Partitions revoked.");
            }
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            self.liveness.set_assigned(true);
            let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            tracking.epoch += 1;
            let epoch = tracking.epoch;
            for element in assigned.elements() {
                tracking
                    .partitions
                    .insert((Arc::from(element.topic()), element.partition()), (epoch, Default::default()));
            }
            let held = tracking.partitions.len();
            drop(tracking);
            info!(partitions = %listed(assigned), held, "Partitions assigned.");
        }
    }
}

/// `topic[0,1,2] other[3]`: the partitions of a rebalance, for its log line.
fn listed(list: &rdkafka::TopicPartitionList) -> String {
    let mut topics: Vec<(String, Vec<i32>)> = Vec::new();
    for element in list.elements() {
        match topics.iter_mut().find(|(topic, _)| topic == element.topic()) {
            Some((_, partitions)) => partitions.push(element.partition()),
            None => topics.push((element.topic().to_owned(), vec![element.partition()])),
        }
    }
    let listed: Vec<String> = topics
        .into_iter()
        .map(|(topic, mut partitions)| {
            partitions.sort_unstable();
            let partitions: Vec<String> = partitions.iter().map(ToString::to_string).collect();
            format!("{topic}[{}]", partitions.join(","))
        })
        .collect();
    if listed.is_empty() { "none".to_owned() } else { listed.join(" ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rebalance_is_listed_per_topic_in_order() {
        let mut list = rdkafka::TopicPartitionList::new();
        for (topic, partition) in [("q", 2), ("q.retry.5s", 1), ("q", 0)] {
            list.add_partition(topic, partition);
        }
        assert_eq!(listed(&list), "q[0,2] q.retry.5s[1]");
        assert_eq!(listed(&rdkafka::TopicPartitionList::new()), "none");
    }
}
