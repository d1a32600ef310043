//! How many records of the worker's dead-letter topic wait for an operator: every record
//! the topic holds, less those `courier dlq` has replayed, parked or purged (one entry
//! each in the ledger topic, `<topic>.ledger`). A log is never emptied, so without the
//! ledger a replayed topic would look as full as before.
//!
//! The ledger is read on from where the last sample stopped, a bounded number of entries
//! per sample, `read_committed`. Only entries for records the topic holds are kept
//! ([`Settled`]), so what this remembers is bounded by the topic itself, whatever the
//! ledger holds.

use std::{
    collections::{BTreeSet, HashMap},
    time::Duration,
};

use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{BaseConsumer, Consumer},
};
use tracing::debug;

use super::{KafkaTransport, METADATA_TIMEOUT, client_config, dead_letters::parse_key};
use crate::{
    contract::naming,
    transport::{Backlog, Topology},
};

/// Ledger entries read in one sample at most (the rest in the next ones).
const ENTRIES_PER_SAMPLE: usize = 10_000;

/// The settled records of a topic that it still holds, per partition.
#[derive(Debug, Default)]
pub(super) struct Settled {
    offsets: HashMap<i32, BTreeSet<i64>>,
}

/// A partition of the topic: (partition, low watermark, high watermark).
pub(super) type Marks = (i32, i64, i64);

impl Settled {
    /// A ledger entry's key, `<partition>:<offset>`, for a topic whose partitions are at
    /// `marks` now. An entry for a record the topic does not hold (not yet written, expired,
    /// or a key that is not ours) is ignored.
    pub(super) fn add(&mut self, key: &[u8], marks: &[Marks]) {
        let Some((partition, offset)) = std::str::from_utf8(key).ok().and_then(parse_key) else { return };
        if marks.iter().any(|&(p, low, high)| p == partition && (low..high).contains(&offset)) {
            self.offsets.entry(partition).or_default().insert(offset);
        }
    }

    /// Records waiting in a topic at `marks`: those it holds less those settled. Settled
    /// records that have expired from the topic are forgotten.
    pub(super) fn waiting(&mut self, marks: &[Marks]) -> u64 {
        self.offsets.retain(|partition, _| marks.iter().any(|(p, _, _)| p == partition));
        let mut waiting = 0;
        for &(partition, low, high) in marks {
            let held = u64::try_from(high - low).unwrap_or(0);
            let settled = self.offsets.get_mut(&partition).map_or(0, |offsets| {
                *offsets = offsets.split_off(&low);
                offsets.range(..high).count() as u64
            });
            waiting += held.saturating_sub(settled);
        }
        waiting
    }
}

/// The worker's dead-letter topic, sampled for its waiting records.
pub(super) struct DeadLetterDepth {
    topic: String,
    ledger: String,
    /// Asks for the watermarks, and reads the ledger once it exists (assigned from its
    /// beginning, outside any group).
    reader: Option<BaseConsumer>,
    /// The ledger's partitions are assigned to `reader`.
    reading_ledger: bool,
    settled: Settled,
}

impl DeadLetterDepth {
    pub(super) fn new(topic: &str) -> Self {
        Self {
            topic: topic.to_owned(),
            ledger: naming::ledger(topic),
            reader: None,
            reading_ledger: false,
            settled: Settled::default(),
        }
    }

    /// The topic's name.
    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// Records waiting; `None` when the topic does not exist or the broker did not answer.
    /// Blocks on the broker: call it off the async runtime.
    pub(super) fn sample(&mut self, transport: &KafkaTransport) -> Option<u64> {
        if self.reader.is_none() {
            let group = format!("courier-dlq-depth-{}", uuid::Uuid::new_v4().simple());
            let config =
                [("group.id", group.as_str()), ("enable.auto.commit", "false"), ("isolation.level", "read_committed")];
            match client_config(transport.config(), &config).create() {
                Ok(reader) => self.reader = Some(reader),
                Err(error) => {
                    debug!(%error, "Could not create the dead-letter ledger's reader.");
                    return None;
                }
            }
        }
        let reader = self.reader.as_ref()?;
        if !self.reading_ledger {
            // Until something is settled there is no ledger: every record waits.
            self.reading_ledger = assign_from_beginning(reader, &self.ledger).is_some();
        }
        let marks = watermarks(reader, &self.topic)?;
        if self.reading_ledger {
            for _ in 0..ENTRIES_PER_SAMPLE {
                match reader.poll(Duration::ZERO) {
                    Some(Ok(entry)) => {
                        if let Some(key) = entry.key().filter(|_| entry.topic() == self.ledger) {
                            self.settled.add(key, &marks);
                        }
                    }
                    Some(Err(error)) => {
                        debug!(%error, ledger = %self.ledger, "Reading the dead-letter ledger.");
                        break;
                    }
                    None => break,
                }
            }
        }
        Some(self.settled.waiting(&marks))
    }
}

/// Assign every partition of `topic` to `reader` from its beginning; `None` when the topic
/// does not exist (or the broker did not answer).
fn assign_from_beginning(reader: &BaseConsumer, topic: &str) -> Option<()> {
    let metadata = reader.fetch_metadata(Some(topic), METADATA_TIMEOUT).ok()?;
    let described = metadata.topics().first().filter(|t| t.error().is_none())?;
    if described.partitions().is_empty() {
        return None;
    }
    let mut assignment = TopicPartitionList::new();
    for partition in described.partitions() {
        assignment.add_partition_offset(topic, partition.id(), Offset::Beginning).ok()?;
    }
    reader.assign(&assignment).ok()
}

impl KafkaTransport {
    /// The worker's dead-letter topic as a queue depth, when it has one of its own and the
    /// broker answered.
    pub(super) async fn dead_letter_backlog(&self, topology: &Topology) -> Option<Backlog> {
        if topology.dead_letter == topology.queue {
            return None;
        }
        let transport = self.clone();
        let topic = topology.dead_letter.clone();
        tokio::task::spawn_blocking(move || {
            let mut depth = transport.shared.dead_letter_depth.lock().unwrap_or_else(|p| p.into_inner());
            let depth = match &mut *depth {
                Some(depth) if depth.topic() == topic => depth,
                slot => slot.insert(DeadLetterDepth::new(&topic)),
            };
            let messages = depth.sample(&transport)?;
            Some(Backlog::Queue { queue: topic, messages })
        })
        .await
        .ok()
        .flatten()
    }
}

/// The low and high watermarks of every partition of `topic`.
fn watermarks(consumer: &BaseConsumer, topic: &str) -> Option<Vec<Marks>> {
    let metadata = consumer.fetch_metadata(Some(topic), METADATA_TIMEOUT).ok()?;
    let described = metadata.topics().first().filter(|t| t.error().is_none())?;
    described
        .partitions()
        .iter()
        .map(|p| {
            let (low, high) = consumer.fetch_watermarks(topic, p.id(), METADATA_TIMEOUT).ok()?;
            Some((p.id(), low, high))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn every_record_waits_until_the_ledger_settles_it() {
        let mut settled = Settled::default();
        let marks = [(0, 0, 3), (1, 0, 2)];
        assert_eq!(settled.waiting(&marks), 5);
        settled.add(b"0:1", &marks);
        settled.add(b"1:0", &marks);
        settled.add(b"1:0", &marks); // the same record twice counts once
        assert_eq!(settled.waiting(&marks), 3);
    }

    #[test]
    fn entries_for_records_the_topic_does_not_hold_are_ignored() {
        let mut settled = Settled::default();
        let marks = [(0, 5, 8)];
        for key in [&b"0:4"[..], b"0:8", b"2:6", b"-1:6", b"0:x", b"06", b"", &[0xff, b':', b'6']] {
            settled.add(key, &marks);
        }
        assert_eq!(settled.waiting(&marks), 3);
        assert!(settled.offsets.values().all(BTreeSet::is_empty));
    }

    #[test]
    fn settled_records_that_expire_are_forgotten() {
        let mut settled = Settled::default();
        settled.add(b"0:5", &[(0, 5, 8)]);
        settled.add(b"0:7", &[(0, 5, 8)]);
        assert_eq!(settled.waiting(&[(0, 5, 8)]), 1);
        // Retention removed 5 and 6: 7 is still settled, 8 and 9 are new.
        assert_eq!(settled.waiting(&[(0, 7, 10)]), 2);
        assert_eq!(settled.offsets[&0].len(), 1);
    }

    proptest! {
        /// Waiting is the records held less the distinct settled ones among them, and what
        /// is remembered never exceeds what the topic holds.
        #[test]
        fn waiting_is_held_less_settled(
            low in 0i64..50, held in 0i64..50, keys in prop::collection::vec((0i32..3, 0i64..120), 0..200),
        ) {
            let marks = [(0, low, low + held), (1, low, low + held)];
            let mut settled = Settled::default();
            for (p, o) in &keys {
                settled.add(format!("{p}:{o}").as_bytes(), &marks);
            }
            let distinct: std::collections::HashSet<_> = keys
                .iter()
                .filter(|(p, o)| *p < 2 && (low..low + held).contains(o))
                .collect();
            let waiting = settled.waiting(&marks);
            prop_assert_eq!(waiting, (2 * held) as u64 - distinct.len() as u64);
            prop_assert!(settled.offsets.values().map(BTreeSet::len).sum::<usize>() <= 2 * held as usize);
        }
    }
}
