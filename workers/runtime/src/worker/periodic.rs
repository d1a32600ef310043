//! The worker's periodic chores beside its consume loop: publishing its backlog as
//! metrics, and removing inbox rows past their retention.

use std::time::Duration;

use tracing::info;

use crate::{
    budget::Budget,
    inbox::Inbox,
    observe::{Metrics, PartitionBacklog},
    transport::{Backlog, Topology, Transport},
};

/// How often [`sample_backlog`] runs.
const BACKLOG_INTERVAL: Duration = Duration::from_secs(2);

/// Every few seconds, publish the transport's backlog (queue depths or lag) and the bytes
/// held against the budget as metrics.
pub(super) async fn sample_backlog<T: Transport>(transport: T, topology: Topology, metrics: Metrics, budget: Budget) {
    let mut every = tokio::time::interval(BACKLOG_INTERVAL);
    loop {
        every.tick().await;
        metrics.set_in_flight_bytes(budget.held());
        let mut lags = Vec::new();
        for backlog in transport.backlog(&topology).await {
            match backlog {
                Backlog::Queue { queue, messages } => metrics.set_queue_depth(&queue, messages),
                Backlog::Lag { topic, partition, lag, oldest_unfinished, held_lanes } => {
                    lags.push(PartitionBacklog { topic, partition, lag, oldest_unfinished, held_lanes });
                }
            }
        }
        metrics.set_partitions(&lags);
    }
}

/// Remove inbox rows older than `retention`, every minute (and at start), for as long as
/// the process runs; a failure is logged and tried again next time.
pub(super) async fn expire_inbox(inbox: Inbox, retention: Duration) {
    let mut every = tokio::time::interval(Duration::from_secs(60));
    loop {
        every.tick().await;
        match inbox.remove_older_than(retention).await {
            Ok(0) => {}
            Ok(removed) => info!(removed, ?retention, "Inbox rows past their retention removed."),
            Err(error) => tracing::warn!(%error, "Could not remove old inbox rows; trying again in a minute."),
        }
    }
}
