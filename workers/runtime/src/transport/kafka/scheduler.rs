//! Which received record goes to the worker next, without I/O: ordering lanes, retry-topic
//! records held until due, lanes whose record retries in place, and what is buffered. The
//! dispatcher ([`super::dispatch`]) feeds it records and the ackers' events, and applies
//! its answers to the consumer (pauses) and to the worker's channel (hand-outs).
//!
//! Every lane other than [`Lane::Free`] is owned by at most one record at a time: the one
//! in `ready` or handed out. The others of that lane wait in `waiting`, in offset order,
//! and the owner's end ([`Scheduler::lane_free`]) passes the lane to the next.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use tokio::time::Instant;

/// A topic's name is shared by its records, not copied per record.
pub(super) type Partition = (Arc<str>, i32);

/// Which records must not run at the same time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Lane {
    /// One at a time per partition.
    Partition(Partition),
    /// One at a time per key within a partition.
    Key(Partition, Vec<u8>),
    /// No constraint.
    Free,
}

/// A lane's hash leaves out its topic's name but for the name's length: a worker reads a
/// handful of topics, lanes of one length and partition number compare their names on a
/// collision, and equal lanes still hash alike. Hashing the name cost the dispatcher about
/// 150 instructions per record with partition ordering (docs/benchmarks.md).
impl std::hash::Hash for Lane {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        std::mem::discriminant(self).hash(state);
        if let Some((topic, partition)) = self.partition() {
            state.write_usize(topic.len());
            state.write_i32(*partition);
        }
        if let Self::Key(_, key) = self {
            key.hash(state);
        }
    }
}

impl Lane {
    /// The partition whose records the lane orders.
    pub(super) fn partition(&self) -> Option<&Partition> {
        match self {
            Self::Partition(partition) | Self::Key(partition, _) => Some(partition),
            Self::Free => None,
        }
    }
}

/// What the scheduler needs to know of a record.
pub(super) trait Record {
    fn lane(&self) -> &Lane;
    fn partition(&self) -> &Partition;
    fn offset(&self) -> i64;
    /// Payload bytes, for the byte budget.
    fn bytes(&self) -> usize;
}

/// How long the dispatcher may go without reading while full. Rebalances are served
/// only while it reads, and librdkafka leaves the group after `max.poll.interval.ms`
/// without a read; a worker that hands out nothing for this long (every handler stuck,
/// or the buffer full of held retries) pauses every partition instead and reads on.
pub(super) const MAX_READ_STALL: Duration = Duration::from_secs(1);

/// What may be buffered.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Records received and not handed out; at the limit the dispatcher stops reading.
    pub records: usize,
    /// Their payload bytes.
    pub bytes: usize,
    /// Records that may wait behind a lane whose record retries in place before its
    /// partition is paused (until the record moves on). Without it, a lane held for minutes
    /// would fill the whole buffer and stop every other partition. Lanes that are merely
    /// busy are not bounded: waiting behind the record in flight is the normal state of a
    /// busy partition with `--ordering partition`, and a pause costs up to a second of
    /// fetching.
    pub waiting_behind_held_lane: usize,
}

pub(super) struct Scheduler<R> {
    limits: Limits,
    /// Records waiting for their lane, in offset order.
    waiting: HashMap<Lane, VecDeque<R>>,
    /// Records in `waiting` (summed here, not recounted per record).
    waiting_len: usize,
    /// Lanes owned by a record ready or handed out.
    busy: HashSet<Lane>,
    /// Records free to go, waiting for room in the worker's channel.
    ready: VecDeque<R>,
    /// Retry records not yet due, by due time.
    held: BTreeMap<(Instant, u64), R>,
    held_per_partition: HashMap<Partition, usize>,
    /// Tie-breaker of `held` for records due at the same instant.
    sequence: u64,
    /// Lanes whose record retries in place.
    held_lanes: HashSet<Lane>,
    /// Partitions to pause: too many records wait behind a held lane.
    crowded: HashSet<Partition>,
    /// Payload bytes of every record buffered (ready, waiting or held).
    bytes: usize,
    /// Since when the buffer is full and nothing is handed out (not while throttled).
    full_since: Option<Instant>,
    /// Every partition paused: the buffer stayed full for [`MAX_READ_STALL`].
    throttled: bool,
    /// Held retries or crowding changed which partitions [`Scheduler::pauses`].
    pauses_changed: bool,
}

impl<R: Record> Scheduler<R> {
    pub(super) fn new(limits: Limits) -> Self {
        Self {
            limits,
            waiting: HashMap::new(),
            waiting_len: 0,
            busy: HashSet::new(),
            ready: VecDeque::new(),
            held: BTreeMap::new(),
            held_per_partition: HashMap::new(),
            sequence: 0,
            held_lanes: HashSet::new(),
            crowded: HashSet::new(),
            bytes: 0,
            full_since: None,
            throttled: false,
            pauses_changed: false,
        }
    }

    /// A record received: queued behind its lane.
    pub(super) fn arrive(&mut self, record: R) {
        self.bytes += record.bytes();
        self.admit(record, false);
    }

    /// A retry-topic record received: held until `due` when that is after `now` (its
    /// partition is paused meanwhile), else queued behind its lane.
    pub(super) fn arrive_due(&mut self, record: R, due: Instant, now: Instant) {
        if due <= now {
            return self.arrive(record);
        }
        self.bytes += record.bytes();
        self.sequence += 1;
        *self.held_per_partition.entry(record.partition().clone()).or_default() += 1;
        self.held.insert((due, self.sequence), record);
        self.pauses_changed = true;
    }

    /// When the first held record is due.
    pub(super) fn next_due(&self) -> Option<Instant> {
        self.held.keys().next().map(|(due, _)| *due)
    }

    /// Queue every held record due by `now` behind its lane.
    pub(super) fn release_due(&mut self, now: Instant) {
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let record = entry.remove();
            if let Some(count) = self.held_per_partition.get_mut(record.partition()) {
                *count -= 1;
                if *count == 0 {
                    self.held_per_partition.remove(record.partition());
                    self.pauses_changed = true;
                }
            }
            self.admit(record, false);
        }
    }

    pub(super) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The next record to hand out (it keeps its lane). `current` says whether the
    /// record's assignment still holds: stale ones (their partition was revoked since)
    /// are dropped on the way, and their lanes passed on.
    pub(super) fn next_ready(&mut self, current: impl Fn(&R) -> bool) -> Option<R> {
        while let Some(record) = self.ready.pop_front() {
            self.bytes -= record.bytes();
            if current(&record) {
                self.full_since = None;
                return Some(record);
            }
            self.lane_free(record.lane());
        }
        None
    }

    /// A record handed out comes back to be handed out again. `owns_lane`: it still owns
    /// its lane, and goes first; otherwise its lane moved on ([`Scheduler::lane_free`]
    /// while it ran) and it queues again, before the lane's later records.
    pub(super) fn redeliver(&mut self, record: R, owns_lane: bool) {
        self.bytes += record.bytes();
        if owns_lane {
            self.ready.push_front(record);
        } else {
            self.admit(record, true);
        }
    }

    /// Make a record ready if its lane is free, else queue it behind the lane. `again`: a
    /// record handed out before, which goes first, and among the waiting records in
    /// offset order (several of one lane may come back after a failed confirm).
    fn admit(&mut self, record: R, again: bool) {
        let lane = record.lane();
        if *lane == Lane::Free || !self.busy.contains(lane) {
            if *lane != Lane::Free {
                self.busy.insert(lane.clone());
            }
            if again {
                self.ready.push_front(record);
            } else {
                self.ready.push_back(record);
            }
            return;
        }
        // Only while some record retries in place: a lane clone is an allocation per record.
        let held = (!self.held_lanes.is_empty()).then(|| lane.clone());
        let waiting = self.waiting.entry(lane.clone()).or_default();
        if again {
            let at = waiting.iter().position(|w| w.offset() > record.offset()).unwrap_or(waiting.len());
            waiting.insert(at, record);
        } else {
            waiting.push_back(record);
        }
        self.waiting_len += 1;
        if let Some(lane) = held {
            self.check_crowding(&lane);
        }
    }

    /// The record owning `lane` is done with it: the next waiting record takes it.
    pub(super) fn lane_free(&mut self, lane: &Lane) {
        if *lane == Lane::Free {
            return;
        }
        if !self.held_lanes.is_empty() {
            self.hold(lane, false);
        }
        let next = self.waiting.get_mut(lane).and_then(VecDeque::pop_front);
        if self.waiting.get(lane).is_some_and(VecDeque::is_empty) {
            self.waiting.remove(lane);
        }
        match next {
            Some(next) => {
                self.waiting_len -= 1;
                self.ready.push_back(next);
            }
            None => {
                self.busy.remove(lane);
            }
        }
    }

    /// The record owning `lane` retries in place (`held`), or no longer does: its
    /// partition resumes if it was paused for crowding.
    pub(super) fn hold(&mut self, lane: &Lane, held: bool) {
        if *lane == Lane::Free {
            return;
        }
        if held {
            self.held_lanes.insert(lane.clone());
            self.check_crowding(lane);
        } else if self.held_lanes.remove(lane)
            && let Some(partition) = lane.partition()
            && self.crowded.contains(partition)
            && !self.held_lanes.iter().any(|other| other.partition() == Some(partition) && self.is_crowded(other))
        {
            self.crowded.remove(partition);
            self.pauses_changed = true;
        }
    }

    /// Lanes of `partition` whose record retries in place.
    pub(super) fn held_lanes(&self, partition: &Partition) -> usize {
        self.held_lanes.iter().filter(|lane| lane.partition() == Some(partition)).count()
    }

    fn is_crowded(&self, lane: &Lane) -> bool {
        self.waiting.get(lane).is_some_and(|waiting| waiting.len() >= self.limits.waiting_behind_held_lane)
    }

    /// Pause the lane's partition when the lane is held and too many records wait behind it.
    fn check_crowding(&mut self, lane: &Lane) {
        let Some(partition) = lane.partition() else { return };
        if self.held_lanes.contains(lane) && self.is_crowded(lane) && self.crowded.insert(partition.clone()) {
            tracing::info!(topic = %partition.0, partition = partition.1, "Records pile up behind a record retrying in place: pausing its partition, reading on.");
            self.pauses_changed = true;
        }
    }

    /// Records received and not handed out (ready, waiting or held).
    pub(super) fn buffered(&self) -> usize {
        self.ready.len() + self.held.len() + self.waiting_len
    }

    /// Whether the buffer is at its limit: no more records are read.
    pub(super) fn is_full(&self) -> bool {
        self.buffered() >= self.limits.records || self.bytes >= self.limits.bytes
    }

    /// Whether the consumer is read: while there is room, or while throttled (every
    /// partition paused, so reading serves rebalances and liveness only).
    pub(super) fn reading(&self) -> bool {
        self.throttled || !self.is_full()
    }

    /// Update the throttle at `now`: it starts once the buffer has been full with nothing
    /// handed out for [`MAX_READ_STALL`], and ends once the buffer is half empty. Returns
    /// when it must be looked at again (while full and not yet throttled).
    pub(super) fn throttle(&mut self, now: Instant) -> Option<Instant> {
        if self.throttled {
            self.throttled = self.buffered() >= self.limits.records / 2 || self.bytes >= self.limits.bytes / 2;
            if !self.throttled {
                tracing::info!(buffered = self.buffered(), "Buffer half empty: resuming every partition.");
            }
        } else if self.is_full() {
            let since = *self.full_since.get_or_insert(now);
            if now >= since + MAX_READ_STALL {
                tracing::info!(
                    buffered = self.buffered(),
                    "Buffer full and nothing handed out for {MAX_READ_STALL:?}: pausing every partition, reading on."
                );
                self.throttled = true;
            } else {
                return Some(since + MAX_READ_STALL);
            }
        }
        if self.throttled || !self.is_full() {
            self.full_since = None;
        }
        None
    }

    pub(super) fn throttled(&self) -> bool {
        self.throttled
    }

    /// Whether `partition` is to be paused: retries held for it, too many records behind
    /// a lane retrying in place, or the throttle.
    pub(super) fn pauses(&self, partition: &Partition) -> bool {
        self.throttled || self.held_per_partition.contains_key(partition) || self.crowded.contains(partition)
    }

    /// Whether [`Scheduler::pauses`] may have changed for some partition since the last
    /// call (the throttle aside).
    pub(super) fn take_pauses_changed(&mut self) -> bool {
        std::mem::take(&mut self.pauses_changed)
    }
}

#[cfg(test)]
mod tests;
