//! The dispatcher: reads the consumer, hands records to the worker in the order the
//! [`Scheduler`] decides, feeds it the ackers' events, and pauses and resumes partitions
//! as it says (held retries, crowding, the throttle) or while the worker takes nothing.

use std::{
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use foldhash::{HashSet, HashSetExt as _};
use futures::{FutureExt as _, StreamExt as _};
use rdkafka::{
    Message as _, Offset, TopicPartitionList,
    consumer::{Consumer, MessageStream, StreamConsumer},
    message::BorrowedMessage,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tracing::{debug, info, warn};

use super::{
    Ordering, RebalanceContext, Tracking, retry_due,
    scheduler::{Lane, Limits, Partition, Record, Scheduler},
};
use crate::transport::{Acker, Delivery, Intake, Message, Position, Source, Subscription, Topology, TransportError};

/// Delay before a nacked record is handed out again.
const REDELIVERY_DELAY: Duration = Duration::from_millis(500);

/// Records the dispatcher may buffer; at the limit (or at its byte limit, the transport's
/// `buffer_bytes`) it stops reading from the consumer, and librdkafka's own prefetch limit
/// (`queued.max.messages.kbytes`, the same bytes, on top of this buffer) then stops its
/// fetching. Pausing instead would cost throughput: librdkafka drops what it prefetched
/// and takes up to a second to fetch again after a resume (docs/benchmarks.md, "Why the
/// transports' defaults").
const MIN_BUFFERED_RECORDS: usize = 10_000;
/// See [`Limits::waiting_behind_held_lane`].
const MAX_WAITING_BEHIND_HELD_LANE: usize = 1_000;
/// Ackers' events handled in one turn of the loop, beyond the one that woke it.
const MAX_EVENTS_PER_TURN: usize = 1_024;
/// Records taken in one turn of the loop when librdkafka already holds them, beyond the
/// one that woke it: a turn of the loop costs more than taking a record.
const MAX_RECORDS_PER_TURN: usize = 256;

/// Offsets to store, one per partition (the last, highest, wins).
type Stores = Vec<(Partition, i64)>;

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

impl Record for Pending {
    fn lane(&self) -> &Lane {
        &self.lane
    }
    fn partition(&self) -> &Partition {
        &self.partition
    }
    fn offset(&self) -> i64 {
        self.offset
    }
    fn bytes(&self) -> usize {
        self.message.payload.len()
    }
}

/// What ackers tell the dispatcher.
#[derive(Debug)]
enum Event {
    /// The record is finished: its offset may be stored, its lane passed on.
    Acked(Pending),
    /// The record's lane passes on before the record is settled ([`Acker::release`]).
    LaneFree(Lane),
    /// Hand this record out again: first if it still owns its lane, else before the
    /// lane's later records ([`Scheduler::redeliver`]).
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
    buffer_bytes: usize,
) -> Subscription<KafkaAcker> {
    let (out, receiver) = mpsc::channel(prefetch.max(1));
    let (intake, wanted) = crate::transport::intake();
    let (events_tx, events) = mpsc::unbounded_channel();
    let limits = Limits {
        records: (prefetch.max(1) * 4 + 100).max(MIN_BUFFERED_RECORDS),
        bytes: buffer_bytes,
        waiting_behind_held_lane: MAX_WAITING_BEHIND_HELD_LANE,
    };
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
        events_tx: Some(events_tx),
        scheduler: Scheduler::new(limits),
        paused: HashSet::new(),
        wanted,
        stopped: false,
        applied: None,
    };
    let (closed, done) = tokio::sync::oneshot::channel();
    tokio::spawn(dispatcher.run(closed));
    Subscription::from_channel(receiver, intake).with_done(async move {
        let _ = done.await;
    })
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
    /// Given to each delivery's acker; dropped once the worker stops taking records, so
    /// `events` ends when the last acker is gone.
    events_tx: Option<mpsc::UnboundedSender<Event>>,
    /// Which record goes next, and which partitions to pause.
    scheduler: Scheduler<Pending>,
    /// Partitions we paused in librdkafka and have not resumed (revoked ones included).
    paused: HashSet<Partition>,
    /// What the worker takes ([`Intake`]).
    wanted: watch::Receiver<Intake>,
    /// The worker takes nothing (its circuit breaker is open): every partition is paused,
    /// nothing is handed out, and the consumer is read on (rebalances, liveness).
    stopped: bool,
    /// (assignment epoch, throttled, stopped) when the pauses were last applied.
    applied: Option<(u64, bool, bool)>,
}

impl Dispatcher {
    /// Dispatch, store what the worker still finishes, then close the consumer (its last
    /// commit, and leaving the group) within [`CLOSE_TIMEOUT`], and only then say so on
    /// `closed`: the process exits soon after, and a close it cuts short leaves the
    /// member's partitions to the session timeout.
    async fn run(mut self, closed: tokio::sync::oneshot::Sender<()>) {
        self.dispatch().await;
        self.drain().await;
        let consumer = Arc::clone(&self.consumer);
        drop(self);
        close(consumer).await;
        let _ = closed.send(());
    }

    /// Hand out records until the worker stops taking them.
    async fn dispatch(&mut self) {
        // A local handle: records borrow the consumer while `self` is updated. One stream
        // for the whole loop: each `recv()` would register and remove a waker (two locks).
        let consumer = Arc::clone(&self.consumer);
        let mut records = consumer.stream();
        let out = self.out.clone();
        loop {
            self.stopped = *self.wanted.borrow_and_update() == Intake::Stopped;
            if !self.stopped {
                self.flush_ready(&out);
            }
            if self.out.is_closed() {
                return;
            }
            let stall_at = self.scheduler.throttle(Instant::now());
            self.apply_pauses();
            let reading = self.stopped || self.scheduler.reading();
            // Acks first: their offsets are stored before a rebalance served by `recv` commits.
            let step = tokio::select! {
                biased;
                Some(event) = self.events.recv() => Step::Event(event),
                received = records.next(), if reading => match received {
                    Some(received) => Step::Received(received),
                    None => return,
                },
                () = sleep_until(self.scheduler.next_due()) => Step::Due,
                () = sleep_until(stall_at.filter(|_| !reading)) => Step::Stalled,
                changed = self.wanted.changed() => match changed {
                    Ok(()) => Step::Intake,
                    Err(_) => return,
                },
                permit = out.reserve(), if self.scheduler.has_ready() && !self.stopped => match permit {
                    Ok(permit) => Step::Room(permit),
                    Err(_) => return,
                },
                () = out.closed() => return,
            };
            match step {
                Step::Received(Ok(record)) => {
                    self.receive(&record);
                    self.receive_ready(&mut records);
                }
                Step::Received(Err(error)) => {
                    warn!(%error, "Kafka consumer error.");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Step::Event(event) => self.handle_events(event),
                Step::Due => self.scheduler.release_due(Instant::now()),
                // The throttle, or the intake, is applied on the next turn.
                Step::Stalled | Step::Intake => {}
                Step::Room(permit) => {
                    // A rebalance served while waiting may have made the front record stale.
                    if let Some(pending) = self.next_ready() {
                        permit.send(self.delivery(pending));
                    }
                }
            }
        }
    }

    /// Take the records librdkafka already holds, up to [`MAX_RECORDS_PER_TURN`] and while
    /// the scheduler reads, without another turn of the loop each.
    fn receive_ready(&mut self, records: &mut MessageStream<'_, RebalanceContext>) {
        for _ in 0..MAX_RECORDS_PER_TURN {
            if !self.scheduler.reading() {
                return;
            }
            match records.next().now_or_never() {
                Some(Some(Ok(record))) => self.receive(&record),
                Some(Some(Err(error))) => {
                    warn!(%error, "Kafka consumer error.");
                    return;
                }
                // Nothing more now.
                _ => return,
            }
        }
    }

    /// Hand out ready records while the worker's channel has room.
    fn flush_ready(&mut self, out: &mpsc::Sender<Delivery<KafkaAcker>>) {
        while self.scheduler.has_ready() {
            let Ok(permit) = out.try_reserve() else { return };
            if let Some(pending) = self.next_ready() {
                permit.send(self.delivery(pending));
            }
        }
    }

    /// The first ready record of a current assignment.
    fn next_ready(&mut self) -> Option<Pending> {
        let tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
        self.scheduler.next_ready(|pending| {
            tracking.partitions.get(&pending.partition).is_some_and(|(epoch, _)| *epoch == pending.epoch)
        })
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
        let position = Position { topic: Arc::clone(&partition.0), partition: partition.1, offset };
        let source = Source { queue: Arc::clone(&self.queue), position: Some(position) };
        let pending = Pending { message, source, partition, offset, lane, epoch, released: false };
        match delay {
            // A retry-topic record is due its tier's delay after it was written (at most that
            // delay from now, whatever its timestamp says).
            Some(delay) => {
                let written = retry_due::written_at(record.timestamp().to_millis());
                let now = Instant::now();
                self.scheduler.arrive_due(pending, now + retry_due::hold(written, delay, SystemTime::now()), now);
            }
            // A work-topic record waits for its lane only: the clock is not read.
            None => self.scheduler.arrive(pending),
        }
    }

    /// The worker takes no more records: store the offsets of those it still finishes,
    /// until the last acker is gone (a record given back stays unstored, for the next owner).
    async fn drain(&mut self) {
        self.events_tx = None;
        let mut stores = Stores::new();
        while let Some(event) = self.events.recv().await {
            if let Event::Acked(pending) = event {
                self.finish(pending, &mut stores);
                self.store(&mut stores);
            }
        }
    }

    fn delivery(&self, pending: Pending) -> Delivery<KafkaAcker> {
        Delivery {
            message: Arc::clone(&pending.message),
            source: pending.source.clone(),
            redelivered: false,
            acker: KafkaAcker { pending: Some(pending), events: self.events_tx.clone() },
        }
    }

    /// Handle `first` and whatever else the ackers sent meanwhile (up to a bound, so
    /// reading and handing out go on under a stream of acks), storing offsets once.
    fn handle_events(&mut self, first: Event) {
        let mut stores = Stores::new();
        self.handle(first, &mut stores);
        for _ in 0..MAX_EVENTS_PER_TURN {
            let Ok(event) = self.events.try_recv() else { break };
            self.handle(event, &mut stores);
        }
        self.store(&mut stores);
    }

    /// A finished record: the offset to store when its partition's finished prefix grew
    /// (in `stores`), and its lane to the next record.
    fn finish(&mut self, pending: Pending, stores: &mut Stores) {
        let next = {
            let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            match tracking.partitions.get_mut(&pending.partition) {
                Some((epoch, offsets)) if *epoch == pending.epoch => offsets.finish(pending.offset),
                _ => None,
            }
        };
        if let Some(next) = next {
            match stores.iter_mut().find(|(partition, _)| *partition == pending.partition) {
                Some((_, stored)) => *stored = next,
                None => stores.push((pending.partition.clone(), next)),
            }
        }
        if !pending.released {
            self.scheduler.lane_free(&pending.lane);
        }
    }

    /// Store the offsets of `stores` in librdkafka (committed every 100 ms, on a
    /// rebalance and on close).
    fn store(&self, stores: &mut Stores) {
        if stores.is_empty() {
            return;
        }
        let mut list = TopicPartitionList::with_capacity(stores.len());
        for ((topic, partition), next) in stores.drain(..) {
            if let Err(error) = list.add_partition_offset(&topic, partition, Offset::Offset(next)) {
                warn!(%error, %topic, partition, "Could not store an offset.");
            }
        }
        if let Err(error) = self.consumer.store_offsets(&list) {
            // The assignment moved on meanwhile: the new owner redoes what is unstored.
            debug!(%error, "Could not store offsets.");
        }
    }

    fn handle(&mut self, event: Event, stores: &mut Stores) {
        match event {
            Event::Acked(pending) => self.finish(pending, stores),
            Event::LaneFree(lane) => self.scheduler.lane_free(&lane),
            Event::Hold(lane, held) => self.hold(&lane, held),
            Event::Redeliver(mut pending) => {
                // A record whose lane moved on queues again, before the lane's next record.
                let owns_lane = !std::mem::take(&mut pending.released);
                self.scheduler.redeliver(*pending, owns_lane);
            }
        }
    }

    /// A lane's record retries in place, or no longer does; the lag sampler shows the
    /// partition's held lanes.
    fn hold(&mut self, lane: &Lane, held: bool) {
        self.scheduler.hold(lane, held);
        let Some(partition) = lane.partition() else { return };
        let count = self.scheduler.held_lanes(partition);
        let mut tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
        if count == 0 {
            tracking.held_lanes.remove(partition);
        } else if tracking.partitions.contains_key(partition) {
            tracking.held_lanes.insert(partition.clone(), count);
        }
    }

    /// Pause the partitions the scheduler pauses, and every one while the worker takes
    /// nothing; resume the rest. This runs every turn, so it asks librdkafka nothing unless
    /// the throttle, the holds, the intake or the assignment changed (`Consumer::assignment`
    /// is a round trip to librdkafka's main thread).
    fn apply_pauses(&mut self) {
        let pauses_changed = self.scheduler.take_pauses_changed();
        let assignment: Vec<Partition> = {
            let tracking = self.tracking.lock().unwrap_or_else(|p| p.into_inner());
            let state = (tracking.epoch, self.scheduler.throttled(), self.stopped);
            if !pauses_changed && self.applied == Some(state) {
                return;
            }
            if self.applied.is_some_and(|(_, _, stopped)| stopped != self.stopped) {
                info!(stopped = self.stopped, "The worker's intake changed: pausing or resuming every partition.");
            }
            self.applied = Some(state);
            tracking.partitions.keys().cloned().collect()
        };
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        // A revoked partition stays in `paused`: librdkafka keeps a partition paused across
        // revocation, so if it is assigned to us again it must be resumed explicitly.
        for partition in assignment {
            let want = self.stopped || self.scheduler.pauses(&partition);
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

/// How long closing the consumer may take once the worker is done with its records:
/// librdkafka's close commits the stored offsets and leaves the group, serving the
/// revocation it brings; it is bounded only by the session timeout while the broker does
/// not answer. Part of the 3 s a stopping worker has to close its broker clients
/// (`app::CLOSE_BOUND`); the producer gets the rest.
const CLOSE_TIMEOUT: Duration = Duration::from_millis(2_500);

/// Close the consumer by dropping its last handle on a blocking thread (librdkafka's
/// close polls until the group is left), waiting at most [`CLOSE_TIMEOUT`]. The lag
/// sampler may hold a handle for one broker call (it upgrades the transport's weak one,
/// and takes none once `closing` is set): the close waits for it, so that it runs here
/// and its end is known; past the bound the handle is let go and its last holder closes
/// it.
async fn close(consumer: Arc<StreamConsumer<RebalanceContext>>) {
    let started = std::time::Instant::now();
    consumer.context().closing.store(true, std::sync::atomic::Ordering::Release);
    let closing = tokio::task::spawn_blocking(move || {
        let mut consumer = consumer;
        while started.elapsed() < CLOSE_TIMEOUT {
            match Arc::try_unwrap(consumer) {
                Ok(last) => {
                    drop(last);
                    return true;
                }
                Err(shared) => consumer = shared,
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    });
    match tokio::time::timeout(CLOSE_TIMEOUT, closing).await {
        Ok(Ok(true)) => info!(took = ?started.elapsed(), "Left the consumer group."),
        // Past the bound the thread goes on until the process exits.
        _ => warn!(
            bound = ?CLOSE_TIMEOUT,
            "The consumer did not close in time: stopping without leaving the group (its partitions wait for the \
             session timeout) and perhaps without the last commit (what finished since is redone)."
        ),
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

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

/// Settles one Kafka record: tells the dispatcher, which stores the partition's offset as
/// far as every earlier record is finished and passes the record's ordering lane on.
pub struct KafkaAcker {
    /// The record, until settled.
    pending: Option<Pending>,
    /// Back to the dispatcher (none once it stopped handing out).
    events: Option<mpsc::UnboundedSender<Event>>,
}

impl std::fmt::Debug for KafkaAcker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAcker").field("pending", &self.pending.as_ref().map(|p| (&p.partition, p.offset))).finish()
    }
}

impl Acker for KafkaAcker {
    async fn ack(mut self) -> Result<(), TransportError> {
        if let Some(pending) = self.pending.take() {
            self.send(Event::Acked(pending));
        }
        Ok(())
    }

    async fn nack(mut self) -> Result<(), TransportError> {
        self.redeliver();
        Ok(())
    }

    fn hold(&mut self, held: bool) {
        if let Some(pending) = self.pending.as_ref().filter(|p| !p.released && p.lane != Lane::Free) {
            let event = Event::Hold(pending.lane.clone(), held);
            self.send(event);
        }
    }

    fn release(&mut self) {
        if let Some(pending) = self.pending.as_mut().filter(|p| !p.released && p.lane != Lane::Free) {
            pending.released = true;
            let event = Event::LaneFree(pending.lane.clone());
            self.send(event);
        }
    }
}

impl KafkaAcker {
    fn send(&self, event: Event) {
        if let Some(events) = &self.events {
            let _ = events.send(event);
        }
    }

    /// Back to the dispatcher after [`REDELIVERY_DELAY`]. The wait holds no sender: a
    /// stopping dispatcher does not wait for it, and drops the record (its offset stays
    /// unstored, so the partition's next owner takes it).
    fn redeliver(&mut self) {
        if let (Some(pending), Some(events)) = (self.pending.take(), self.events.as_ref()) {
            let events = events.downgrade();
            tokio::spawn(async move {
                tokio::time::sleep(REDELIVERY_DELAY).await;
                if let Some(events) = events.upgrade() {
                    let _ = events.send(Event::Redeliver(Box::new(pending)));
                }
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
