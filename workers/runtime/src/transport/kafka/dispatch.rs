//! The dispatcher: turns the consumer's stream of records into deliveries for the
//! worker, keeping the ordering mode, holding retry-topic records until they are due
//! (pausing their partition instead of sleeping in the poll loop), and stopping to read
//! while too much is buffered.

use std::{
    collections::{BTreeMap, VecDeque},
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use foldhash::{HashMap, HashMapExt as _, HashSet, HashSetExt as _};
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{Consumer, StreamConsumer},
    message::BorrowedMessage,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{Ordering, RebalanceContext, Tracking};
use crate::transport::{Acker, Delivery, Intake, Message, Source, Subscription, Topology, TransportError};

/// Delay before a nacked record is handed out again.
const REDELIVERY_DELAY: Duration = Duration::from_millis(500);

/// Records the dispatcher may buffer; at the limit it stops reading from the consumer, and
/// librdkafka's own prefetch limits (`queued.max.messages.kbytes`, 64 MiB by default, on
/// top of this buffer) then stop its fetching. Pausing instead would cost throughput:
/// librdkafka drops what it prefetched and takes up to a second to fetch again after a
/// resume, which cut a no-op worker at concurrency 1,000 to 18,000 msg/s.
const MIN_BUFFERED_RECORDS: usize = 10_000;
/// Payload bytes the dispatcher may buffer before it stops reading.
const MAX_BUFFERED_BYTES: usize = 64 << 20;
/// How long the dispatcher may go without reading while full. Rebalances are served
/// only while it reads, and librdkafka leaves the group after `max.poll.interval.ms`
/// without a read; a worker that hands out nothing for this long (every handler stuck,
/// or the buffer full of held retries) pauses every partition instead and reads on.
const MAX_READ_STALL: Duration = Duration::from_secs(1);

/// Records that may wait behind a lane whose record retries in place before its partition
/// is paused (until the record moves on). Without it, a lane held for minutes would fill
/// the whole buffer and stop every other partition. Lanes that are merely busy are not
/// bounded: waiting behind the record in flight is the normal state of a busy partition
/// with `--ordering partition`, and a pause costs up to a second of fetching.
const MAX_WAITING_BEHIND_HELD_LANE: usize = 1_000;

/// A topic's name is shared by its records ([`Dispatcher::topic`]), not copied per record.
type Partition = (Arc<str>, i32);

/// Which records must not run at the same time.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Lane {
    /// One at a time per partition.
    Partition(Partition),
    /// One at a time per key within a partition.
    Key(Partition, Vec<u8>),
    /// No constraint.
    Free,
}

impl Lane {
    /// The partition whose records the lane orders.
    fn partition(&self) -> Option<&Partition> {
        match self {
            Self::Partition(partition) | Self::Key(partition, _) => Some(partition),
            Self::Free => None,
        }
    }
}

/// A record received and not yet finished.
#[derive(Clone, Debug)]
struct Pending {
    /// Shared with the delivery: kept for a redelivery.
    message: Arc<Message>,
    source: Source,
    partition: Partition,
    offset: i64,
    lane: Lane,
    epoch: u64,
    /// Its lane was released before it was settled ([`Acker::release`]).
    released: bool,
}

/// What ackers tell the dispatcher.
#[derive(Debug)]
enum Event {
    /// A record of this lane finished: the next may go.
    LaneFree(Lane),
    /// Hand this record out again (its lane stays taken).
    Redeliver(Box<Pending>),
    /// This lane's record retries in place (`true`) or no longer does.
    Hold(Lane, bool),
}

/// Start dispatching; the returned subscription ends the dispatcher when dropped.
pub(super) fn start(
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    tracking: Arc<Mutex<Tracking>>,
    topology: &Topology,
    ordering: Ordering,
    prefetch: usize,
) -> Subscription<KafkaAcker> {
    let (out, receiver) = mpsc::channel(prefetch.max(1));
    let (intake, wanted) = crate::transport::intake();
    let (events_tx, events) = mpsc::unbounded_channel();
    let dispatcher = Dispatcher {
        consumer,
        tracking,
        ordering,
        queue: topology.queue.as_str().into(),
        topics: std::iter::once((topology.queue.as_str().into(), None))
            .chain(topology.retry_tiers.iter().map(|t| (t.name.as_str().into(), Some(t.delay))))
            .collect(),
        out,
        events,
        events_tx,
        waiting: HashMap::new(),
        busy: HashSet::new(),
        ready: VecDeque::new(),
        held: BTreeMap::new(),
        held_per_partition: HashMap::new(),
        held_lanes: HashSet::new(),
        crowded: HashSet::new(),
        paused: HashSet::new(),
        throttled: false,
        wanted,
        stopped: false,
        full_since: None,
        holds_changed: false,
        paused_epoch: 0,
        paused_stopped: false,
        waiting_len: 0,
        buffer_limit: (prefetch.max(1) * 4 + 100).max(MIN_BUFFERED_RECORDS),
        buffered_bytes: 0,
        sequence: 0,
    };
    tokio::spawn(dispatcher.run());
    Subscription::from_channel(receiver, intake)
}

struct Dispatcher {
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    tracking: Arc<Mutex<Tracking>>,
    ordering: Ordering,
    /// The work topic (the `source` of every delivery, retries included).
    queue: Arc<str>,
    /// Every topic seen, with its retry delay when it is a retry topic (a handful: looked
    /// up by a scan, without hashing or copying the name per record).
    topics: Vec<(Arc<str>, Option<Duration>)>,
    /// To the worker.
    out: mpsc::Sender<Delivery<KafkaAcker>>,
    events: mpsc::UnboundedReceiver<Event>,
    events_tx: mpsc::UnboundedSender<Event>,
    /// Records waiting for their lane.
    waiting: HashMap<Lane, VecDeque<Pending>>,
    /// Lanes with a record handed out.
    busy: HashSet<Lane>,
    /// Records free to go, waiting for room in `out`.
    ready: VecDeque<Pending>,
    /// Retry records not yet due, by due time.
    held: BTreeMap<(Instant, u64), Pending>,
    held_per_partition: HashMap<Partition, usize>,
    /// Lanes whose record retries in place ([`Acker::hold`]).
    held_lanes: HashSet<Lane>,
    /// Partitions paused because too many records wait behind a held lane
    /// ([`MAX_WAITING_BEHIND_HELD_LANE`]).
    crowded: HashSet<Partition>,
    /// Partitions we paused in librdkafka and have not resumed (revoked ones included).
    paused: HashSet<Partition>,
    /// Every partition paused: the buffer stayed full for [`MAX_READ_STALL`].
    throttled: bool,
    /// What the worker takes ([`Intake`]).
    wanted: watch::Receiver<Intake>,
    /// The worker takes nothing (its circuit breaker is open): every partition is paused,
    /// nothing is handed out, and the consumer is read on (rebalances, liveness).
    stopped: bool,
    /// Since when the buffer is full and the consumer is not read (not while throttled).
    full_since: Option<Instant>,
    /// The held retries changed partitions since the pauses were last applied.
    holds_changed: bool,
    /// The assignment epoch the pauses were last applied for.
    paused_epoch: u64,
    /// `stopped` when the pauses were last applied.
    paused_stopped: bool,
    /// Records in `waiting` (summed here, not recounted per record).
    waiting_len: usize,
    /// Payload bytes of every record buffered (ready, waiting or held).
    buffered_bytes: usize,

    buffer_limit: usize,
    sequence: u64,
}

impl Dispatcher {
    async fn run(mut self) {
        // A local handle: records borrow the consumer while `self` is updated.
        let consumer = Arc::clone(&self.consumer);
        let out = self.out.clone();
        loop {
            self.stopped = *self.wanted.borrow_and_update() == Intake::Stopped;
            if !self.stopped {
                self.flush_ready(&out);
            }
            if self.out.is_closed() {
                return;
            }
            if self.throttled || !self.is_full() {
                self.full_since = None;
            } else if self.full_since.is_none() {
                self.full_since = Some(Instant::now());
            }
            self.apply_pauses();
            let reading = self.throttled || self.stopped || !self.is_full();
            let next_due = self.held.keys().next().map(|(due, _)| *due);
            let stall_at = self.full_since.filter(|_| !reading).map(|since| since + MAX_READ_STALL);
            let step = tokio::select! {
                received = consumer.recv(), if reading => Step::Received(received),
                Some(event) = self.events.recv() => Step::Event(event),
                () = sleep_until(next_due) => Step::Due,
                () = sleep_until(stall_at) => Step::Stalled,
                changed = self.wanted.changed() => match changed {
                    Ok(()) => Step::Intake,
                    Err(_) => return,
                },
                permit = out.reserve(), if !self.ready.is_empty() && !self.stopped => match permit {
                    Ok(permit) => Step::Room(permit),
                    Err(_) => return,
                },
                () = out.closed() => return,
            };
            match step {
                Step::Received(Ok(record)) => self.receive(&record),
                Step::Received(Err(error)) => {
                    warn!(%error, "Kafka consumer error.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Step::Event(event) => self.handle(event),
                Step::Due => self.release_due(),
                // `apply_pauses` throttles, or follows the intake, on the next turn.
                Step::Stalled | Step::Intake => {}
                Step::Room(permit) => {
                    // A rebalance served while waiting may have made the front record stale.
                    if let Some(pending) = self.next_ready() {
                        self.hand_out(permit, pending);
                    }
                }
            }
        }
    }

    /// Hand out ready records while the worker's channel has room.
    fn flush_ready(&mut self, out: &mpsc::Sender<Delivery<KafkaAcker>>) {
        while !self.ready.is_empty() {
            let Ok(permit) = out.try_reserve() else { return };
            if let Some(pending) = self.next_ready() {
                self.hand_out(permit, pending);
            }
        }
    }

    /// The first ready record of a current assignment; stale ones (their partition was
    /// revoked since) are dropped on the way, and their lanes freed.
    fn next_ready(&mut self) -> Option<Pending> {
        while let Some(pending) = self.ready.pop_front() {
            self.buffered_bytes -= pending.message.payload.len();
            if self.is_current(&pending) {
                return Some(pending);
            }
            self.free_lane(pending.lane);
        }
        None
    }

    /// Send a record to the worker. Something was handed out: a full buffer is not stalled.
    fn hand_out(&mut self, permit: mpsc::Permit<'_, Delivery<KafkaAcker>>, pending: Pending) {
        permit.send(delivery(&self.consumer, &self.tracking, &self.events_tx, pending));
        self.full_since = None;
    }

    fn is_current(&self, pending: &Pending) -> bool {
        let tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
        tracking.partitions.get(&pending.partition).is_some_and(|(epoch, _)| *epoch == pending.epoch)
    }

    /// The shared name of `name` and its retry delay (none for the work topic).
    fn topic(&mut self, name: &str) -> (Arc<str>, Option<Duration>) {
        if let Some((topic, delay)) = self.topics.iter().find(|(topic, _)| &**topic == name) {
            return (Arc::clone(topic), *delay);
        }
        let topic: Arc<str> = name.into();
        self.topics.push((Arc::clone(&topic), None));
        (topic, None)
    }

    fn receive(&mut self, record: &BorrowedMessage<'_>) {
        let (topic, delay) = self.topic(record.topic());
        let partition = (topic, record.partition());
        let offset = record.offset();
        let epoch = {
            let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            let Some((epoch, offsets)) = tracking.partitions.get_mut(&partition) else {
                debug!(topic = %partition.0, partition = partition.1, "Record of an unassigned partition; skipped.");
                return;
            };
            offsets.start(offset);
            *epoch
        };
        let message = Arc::new(super::convert::to_message(record));
        let lane = match (delay, self.ordering) {
            (Some(_), _) | (None, Ordering::None) => Lane::Free,
            (None, Ordering::Partition) => Lane::Partition(partition.clone()),
            (None, Ordering::Key) => match record.key() {
                Some(key) => Lane::Key(partition.clone(), key.to_vec()),
                None => Lane::Partition(partition.clone()),
            },
        };
        let source = Source { queue: Arc::clone(&self.queue), partition: Some(partition.1), offset: Some(offset) };
        let pending = Pending { message, source, partition: partition.clone(), offset, lane, epoch, released: false };
        self.buffered_bytes += pending.message.payload.len();
        if let Some(delay) = delay {
            let written = record.timestamp().to_millis().and_then(|ms| u64::try_from(ms).ok());
            let written = written.map_or_else(SystemTime::now, |ms| SystemTime::UNIX_EPOCH + Duration::from_millis(ms));
            let wait = (written + delay).duration_since(SystemTime::now()).unwrap_or_default();
            if !wait.is_zero() {
                self.sequence += 1;
                self.held.insert((Instant::now() + wait, self.sequence), pending);
                *self.held_per_partition.entry(partition).or_default() += 1;
                self.holds_changed = true;
                return;
            }
        }
        self.admit(pending, false);
    }

    /// Queue a record behind its lane, or make it ready if the lane is free. `again`: a
    /// record handed out before, which goes first, and among the waiting records in
    /// offset order (several of one lane may come back after a failed confirm).
    fn admit(&mut self, pending: Pending, again: bool) {
        if pending.lane == Lane::Free || self.busy.insert(pending.lane.clone()) {
            if again {
                self.ready.push_front(pending);
            } else {
                self.ready.push_back(pending);
            }
        } else {
            // Only while some record retries in place: a lane clone is an allocation per record.
            let held = (!self.held_lanes.is_empty()).then(|| pending.lane.clone());
            let waiting = self.waiting.entry(pending.lane.clone()).or_default();
            if again {
                let at = waiting.iter().position(|w| w.offset > pending.offset).unwrap_or(waiting.len());
                waiting.insert(at, pending);
            } else {
                waiting.push_back(pending);
            }
            self.waiting_len += 1;
            if let Some(lane) = held {
                self.check_crowding(&lane);
            }
        }
    }

    fn handle(&mut self, event: Event) {
        match event {
            Event::LaneFree(lane) => self.free_lane(lane),
            Event::Hold(lane, held) => self.hold(lane, held),
            Event::Redeliver(mut pending) => {
                self.buffered_bytes += pending.message.payload.len();
                if pending.released {
                    // Its lane moved on: take it again, before the lane's next record.
                    pending.released = false;
                    self.admit(*pending, true);
                } else {
                    self.ready.push_front(*pending);
                }
            }
        }
    }

    /// Pause the lane's partition when the lane is held and too many records wait behind it.
    fn check_crowding(&mut self, lane: &Lane) {
        let Some(partition) = lane.partition() else { return };
        let waiting = self.waiting.get(lane).map_or(0, VecDeque::len);
        if self.held_lanes.contains(lane)
            && waiting >= MAX_WAITING_BEHIND_HELD_LANE
            && self.crowded.insert(partition.clone())
        {
            info!(topic = %partition.0, partition = partition.1, waiting, "Records pile up behind a record retrying in place: pausing its partition, reading on.");
            self.holds_changed = true;
        }
    }

    /// A lane's record retries in place (`held`), or moves on: its partition resumes.
    fn hold(&mut self, lane: Lane, held: bool) {
        if held {
            self.held_lanes.insert(lane.clone());
            self.check_crowding(&lane);
        } else {
            if let Some(partition) = lane.partition()
                && self.crowded.remove(partition)
            {
                self.holds_changed = true;
            }
            self.held_lanes.remove(&lane);
        }
    }

    fn free_lane(&mut self, lane: Lane) {
        if lane == Lane::Free {
            return;
        }
        if !self.held_lanes.is_empty() {
            self.hold(lane.clone(), false);
        }
        let next = self.waiting.get_mut(&lane).and_then(VecDeque::pop_front);
        if self.waiting.get(&lane).is_some_and(VecDeque::is_empty) {
            self.waiting.remove(&lane);
        }
        match next {
            Some(next) => {
                self.waiting_len -= 1;
                self.ready.push_back(next);
            }
            None => {
                self.busy.remove(&lane);
            }
        }
    }

    fn release_due(&mut self) {
        let now = Instant::now();
        while let Some(entry) = self.held.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let pending = entry.remove();
            if let Some(count) = self.held_per_partition.get_mut(&pending.partition) {
                *count -= 1;
                if *count == 0 {
                    self.held_per_partition.remove(&pending.partition);
                    self.holds_changed = true;
                }
            }
            self.admit(pending, false);
        }
    }

    /// Whether the buffer is at its limit: no more records are read.
    fn is_full(&self) -> bool {
        self.buffered() >= self.buffer_limit || self.buffered_bytes >= MAX_BUFFERED_BYTES
    }

    /// Records received and not handed out yet.
    fn buffered(&self) -> usize {
        self.ready.len() + self.held.len() + self.waiting_len
    }

    /// Pause partitions with held retries or too many records behind a lane retrying in place,
    /// everything while the worker takes nothing, and everything while the buffer has been
    /// full for [`MAX_READ_STALL`] (until it is half empty); resume the rest. This runs every
    /// turn, so it asks librdkafka nothing unless the throttle, the holds or the
    /// assignment changed (`Consumer::assignment` is a round trip to librdkafka's main
    /// thread).
    fn apply_pauses(&mut self) {
        let throttled = if self.throttled {
            self.buffered() >= self.buffer_limit / 2 || self.buffered_bytes >= MAX_BUFFERED_BYTES / 2
        } else {
            self.full_since.is_some_and(|since| since.elapsed() >= MAX_READ_STALL)
        };
        let assignment: Vec<Partition> = {
            let tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            if throttled == self.throttled
                && self.stopped == self.paused_stopped
                && !self.holds_changed
                && tracking.epoch == self.paused_epoch
            {
                return;
            }
            self.paused_epoch = tracking.epoch;
            tracking.partitions.keys().cloned().collect()
        };
        if throttled != self.throttled {
            if throttled {
                info!(
                    buffered = self.buffered(),
                    "Buffer full and nothing handed out for {MAX_READ_STALL:?}: pausing every partition, reading on."
                );
            } else {
                info!(buffered = self.buffered(), "Buffer half empty: resuming every partition.");
            }
        }
        if self.stopped != self.paused_stopped {
            info!(stopped = self.stopped, "The worker's intake changed: pausing or resuming every partition.");
        }
        self.throttled = throttled;
        self.paused_stopped = self.stopped;
        self.holds_changed = false;
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        // A revoked partition stays in `paused`: librdkafka keeps a partition paused across
        // revocation, so if it is assigned to us again it must be resumed explicitly.
        for partition in assignment {
            let want = self.throttled
                || self.stopped
                || self.held_per_partition.contains_key(&partition)
                || self.crowded.contains(&partition);
            let is = self.paused.contains(&partition);
            if want && !is {
                pause.add_partition(&partition.0, partition.1);
                self.paused.insert(partition);
            } else if !want && is {
                resume.add_partition(&partition.0, partition.1);
                self.paused.remove(&partition);
            }
        }
        if pause.count() > 0
            && let Err(error) = self.consumer.pause(&pause)
        {
            warn!(%error, "Could not pause partitions.");
        }
        if resume.count() > 0
            && let Err(error) = self.consumer.resume(&resume)
        {
            warn!(%error, "Could not resume partitions.");
        }
    }
}

/// One turn of the dispatcher loop.
enum Step<'c> {
    Received(Result<BorrowedMessage<'c>, rdkafka::error::KafkaError>),
    Event(Event),
    Due,
    Stalled,
    Intake,
    Room(mpsc::Permit<'c, Delivery<KafkaAcker>>),
}

fn delivery(
    consumer: &Arc<StreamConsumer<RebalanceContext>>,
    tracking: &Arc<Mutex<Tracking>>,
    events: &mpsc::UnboundedSender<Event>,
    pending: Pending,
) -> Delivery<KafkaAcker> {
    Delivery {
        message: Arc::clone(&pending.message),
        source: pending.source.clone(),
        redelivered: false,
        acker: KafkaAcker {
            pending: Some(pending),
            consumer: Arc::clone(consumer),
            tracking: Arc::clone(tracking),
            events: events.clone(),
        },
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Settles one Kafka record: stores the partition's offset as far as every earlier
/// record is finished, and frees the record's ordering lane.
pub struct KafkaAcker {
    /// The record, until settled.
    pending: Option<Pending>,
    /// Stores offsets (the consumer lives until its last acker is gone).
    consumer: Arc<StreamConsumer<RebalanceContext>>,
    /// Offsets in flight per partition.
    tracking: Arc<Mutex<Tracking>>,
    /// Back to the dispatcher.
    events: mpsc::UnboundedSender<Event>,
}

impl std::fmt::Debug for KafkaAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAcker").field("pending", &self.pending.as_ref().map(|p| (&p.partition, p.offset))).finish()
    }
}

impl Acker for KafkaAcker {
    async fn ack(mut self) -> Result<(), TransportError> {
        let Some(pending) = self.pending.take() else { return Ok(()) };
        let store = {
            let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            match tracking.partitions.get_mut(&pending.partition) {
                Some((epoch, offsets)) if *epoch == pending.epoch => offsets.finish(pending.offset),
                _ => None,
            }
        };
        if !pending.released && pending.lane != Lane::Free {
            let _ = self.events.send(Event::LaneFree(pending.lane));
        }
        if let Some(next) = store {
            let mut list = TopicPartitionList::new();
            list.add_partition_offset(&pending.partition.0, pending.partition.1, Offset::Offset(next))
                .map_err(|e| TransportError::Broker(e.to_string()))?;
            self.consumer.store_offsets(&list).map_err(|e| TransportError::Broker(e.to_string()))?;
        }
        Ok(())
    }

    async fn nack(mut self) -> Result<(), TransportError> {
        self.redeliver();
        Ok(())
    }

    fn hold(&mut self, held: bool) {
        if let Some(pending) = self.pending.as_ref().filter(|p| !p.released && p.lane != Lane::Free) {
            let _ = self.events.send(Event::Hold(pending.lane.clone(), held));
        }
    }

    fn release(&mut self) {
        if let Some(pending) = self.pending.as_mut().filter(|p| !p.released && p.lane != Lane::Free) {
            pending.released = true;
            let _ = self.events.send(Event::LaneFree(pending.lane.clone()));
        }
    }
}

impl KafkaAcker {
    fn redeliver(&mut self) {
        if let Some(pending) = self.pending.take() {
            let events = self.events.clone();
            tokio::spawn(async move {
                tokio::time::sleep(REDELIVERY_DELAY).await;
                let _ = events.send(Event::Redeliver(Box::new(pending)));
            });
        }
    }
}

impl Drop for KafkaAcker {
    fn drop(&mut self) {
        if self.pending.is_some() && tokio::runtime::Handle::try_current().is_ok() {
            self.redeliver();
        }
    }
}
