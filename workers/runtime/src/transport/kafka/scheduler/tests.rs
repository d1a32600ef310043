//! The scheduler against a reference model: random sequences of arrivals, hand-outs,
//! acks, nacks, holds, releases, revocations and time, with every rule checked after each
//! step and everything drained at the end.

use std::{
    cell::RefCell,
    collections::{BTreeMap, BTreeSet},
};

use proptest::prelude::*;

use super::*;

#[derive(Clone, Debug)]
struct Rec {
    id: usize,
    lane: Lane,
    partition: Partition,
    offset: i64,
    bytes: usize,
    epoch: u64,
    /// Due time of a retry-topic record.
    due: Option<Instant>,
}

impl Record for Rec {
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
        self.bytes
    }
}

const LIMITS: Limits = Limits { records: 12, bytes: 600, waiting_behind_held_lane: 3 };

fn partition(topic: &str, n: i32) -> Partition {
    (Arc::from(topic), n)
}

fn lane_of(ordering: u8, p: &Partition, key: Option<u8>) -> Lane {
    match (ordering, key) {
        (0, _) => Lane::Free,
        (1, _) | (_, None) => Lane::Partition(p.clone()),
        (_, Some(key)) => Lane::Key(p.clone(), vec![key]),
    }
}

#[derive(Clone, Debug)]
enum Op {
    Arrive {
        partition: i32,
        key: Option<u8>,
        retry_in_ms: Option<u64>,
        bytes: usize,
    },
    Take,
    Ack(usize),
    Nack(usize),
    Hold(usize, bool),
    Release(usize),
    /// The partition is revoked and assigned again.
    Reassign(i32),
    Tick(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..2i32, proptest::option::of(0..3u8), proptest::option::weighted(0.2, 0..50u64), 0..80usize)
            .prop_map(|(partition, key, retry_in_ms, bytes)| Op::Arrive { partition, key, retry_in_ms, bytes }),
        4 => Just(Op::Take),
        3 => any::<usize>().prop_map(Op::Ack),
        1 => any::<usize>().prop_map(Op::Nack),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(i, held)| Op::Hold(i, held)),
        1 => any::<usize>().prop_map(Op::Release),
        1 => (0..2i32).prop_map(Op::Reassign),
        1 => (0..40u64).prop_map(Op::Tick),
    ]
}

/// A record handed out and not settled.
#[derive(Debug)]
struct Out {
    rec: Rec,
    /// Its lane was passed on before it was settled.
    released: bool,
}

struct Model {
    scheduler: Scheduler<Rec>,
    ordering: u8,
    now: Instant,
    next_id: usize,
    next_offset: BTreeMap<Partition, i64>,
    epochs: BTreeMap<i32, u64>,
    /// In the scheduler: id → record.
    buffered: BTreeMap<usize, Rec>,
    /// Never handed out (counts against the buffer's limit).
    fresh: BTreeSet<usize>,
    /// (owner, earlier): `earlier` came back after its lane had passed on (released,
    /// then nacked) and found `owner` holding it: `owner` goes first.
    overtakes: BTreeSet<(usize, usize)>,
    out: Vec<Out>,
    /// Lanes whose record retries in place.
    held_lanes: BTreeSet<String>,
    finished: BTreeSet<usize>,
    dropped: BTreeSet<usize>,
    arrived: usize,
}

impl Model {
    fn new(ordering: u8) -> Self {
        Self {
            scheduler: Scheduler::new(LIMITS),
            ordering,
            now: Instant::now(),
            next_id: 0,
            next_offset: BTreeMap::new(),
            epochs: BTreeMap::new(),
            buffered: BTreeMap::new(),
            fresh: BTreeSet::new(),
            overtakes: BTreeSet::new(),
            out: Vec::new(),
            held_lanes: BTreeSet::new(),
            finished: BTreeSet::new(),
            dropped: BTreeSet::new(),
            arrived: 0,
        }
    }

    fn is_current(&self, rec: &Rec) -> bool {
        self.epochs.get(&rec.partition.1).copied().unwrap_or(0) == rec.epoch
    }

    fn step(&mut self, op: Op) {
        match op {
            Op::Arrive { partition: n, key, retry_in_ms, bytes } => {
                let work = partition("work", n);
                // The consumer is not read while full, nor a paused partition.
                if !self.scheduler.reading() || self.scheduler.throttled() {
                    return;
                }
                let (p, lane, due) = match retry_in_ms {
                    Some(ms) => {
                        let p = partition("retry", n);
                        if self.scheduler.pauses(&p) {
                            return;
                        }
                        (p, Lane::Free, Some(self.now + Duration::from_millis(ms)))
                    }
                    None => {
                        if self.scheduler.pauses(&work) {
                            return;
                        }
                        let lane = lane_of(self.ordering, &work, key);
                        (work, lane, None)
                    }
                };
                let offset = self.next_offset.entry(p.clone()).or_default();
                let rec = Rec {
                    id: self.next_id,
                    lane,
                    epoch: self.epochs.get(&n).copied().unwrap_or(0),
                    partition: p,
                    offset: *offset,
                    bytes,
                    due,
                };
                *offset += 1;
                self.next_id += 1;
                self.arrived += 1;
                self.buffered.insert(rec.id, rec.clone());
                self.fresh.insert(rec.id);
                match due {
                    Some(due) => self.scheduler.arrive_due(rec, due, self.now),
                    None => self.scheduler.arrive(rec),
                }
            }
            Op::Take => self.take(),
            Op::Ack(i) => {
                if self.out.is_empty() {
                    return;
                }
                let Out { rec, released } = self.out.swap_remove(i % self.out.len());
                if !released {
                    self.scheduler.lane_free(&rec.lane);
                    self.held_lanes.remove(&format!("{:?}", rec.lane));
                }
                self.finished.insert(rec.id);
            }
            Op::Nack(i) => {
                if self.out.is_empty() {
                    return;
                }
                let Out { rec, released } = self.out.swap_remove(i % self.out.len());
                self.buffered.insert(rec.id, rec.clone());
                if released {
                    let owner = self
                        .scheduler
                        .ready
                        .iter()
                        .map(|r| (&r.lane, r.id))
                        .chain(self.out.iter().filter(|o| !o.released).map(|o| (&o.rec.lane, o.rec.id)));
                    if let Some((_, owner)) = owner.into_iter().find(|(lane, _)| **lane == rec.lane) {
                        self.overtakes.insert((owner, rec.id));
                    }
                }
                self.scheduler.redeliver(rec, !released);
            }
            Op::Hold(i, held) => {
                if let Some(out) = self.out.get(i % self.out.len().max(1))
                    && !out.released
                    && out.rec.lane != Lane::Free
                {
                    let lane = out.rec.lane.clone();
                    if held {
                        self.held_lanes.insert(format!("{lane:?}"));
                    } else {
                        self.held_lanes.remove(&format!("{lane:?}"));
                    }
                    self.scheduler.hold(&lane, held);
                }
            }
            Op::Release(i) => {
                let len = self.out.len().max(1);
                if let Some(out) = self.out.get_mut(i % len)
                    && !out.released
                    && out.rec.lane != Lane::Free
                {
                    out.released = true;
                    self.held_lanes.remove(&format!("{:?}", out.rec.lane));
                    self.scheduler.lane_free(&out.rec.lane);
                }
            }
            Op::Reassign(n) => *self.epochs.entry(n).or_default() += 1,
            Op::Tick(ms) => {
                self.now += Duration::from_millis(ms);
                self.scheduler.release_due(self.now);
            }
        }
        self.check();
    }

    fn take(&mut self) {
        let stale = RefCell::new(Vec::new());
        let epochs = self.epochs.clone();
        let next = self.scheduler.next_ready(|rec| {
            let current = epochs.get(&rec.partition.1).copied().unwrap_or(0) == rec.epoch;
            if !current {
                stale.borrow_mut().push(rec.id);
            }
            current
        });
        for id in stale.into_inner() {
            let rec = self.buffered.remove(&id).expect("a dropped record was buffered");
            assert!(!self.is_current(&rec));
            self.fresh.remove(&id);
            self.dropped.insert(id);
            // A stale record passes its lane on, and ends its hold.
            self.held_lanes.remove(&format!("{:?}", rec.lane));
        }
        let Some(rec) = next else { return };
        let buffered = self.buffered.remove(&rec.id).expect("a record handed out was buffered");
        self.fresh.remove(&rec.id);
        assert!(self.is_current(&rec), "only current records are handed out");
        assert!(rec.due.is_none_or(|due| due <= self.now), "a retry record is held until it is due");
        assert_eq!(buffered.offset, rec.offset);
        if rec.lane != Lane::Free {
            assert!(
                !self.out.iter().any(|o| !o.released && o.rec.lane == rec.lane),
                "{:?} handed out while its lane is taken",
                rec.lane
            );
            let earlier = self.buffered.values().find(|b| {
                b.lane == rec.lane
                    && b.epoch == rec.epoch
                    && b.offset < rec.offset
                    && !self.overtakes.contains(&(rec.id, b.id))
            });
            assert!(earlier.is_none(), "offset {} handed out before {earlier:?} of its lane", rec.offset);
        }
        self.out.push(Out { rec, released: false });
    }

    /// The rules that hold after every step.
    fn check(&self) {
        let s = &self.scheduler;
        assert_eq!(s.buffered(), self.buffered.len(), "records buffered");
        assert_eq!(s.bytes, self.buffered.values().map(|r| r.bytes).sum::<usize>(), "bytes buffered");
        assert!(self.fresh.len() <= LIMITS.records, "the buffer's limit holds for records read");
        // Every waiting lane is owned by exactly one record, ready or handed out.
        let owners = |lane: &Lane| {
            s.ready.iter().filter(|r| r.lane == *lane).count()
                + self.out.iter().filter(|o| !o.released && o.rec.lane == *lane).count()
        };
        for lane in &s.busy {
            assert_eq!(owners(lane), 1, "{lane:?} has one owner");
        }
        for (lane, waiting) in &s.waiting {
            assert!(!waiting.is_empty());
            assert!(s.busy.contains(lane), "records wait behind a free lane {lane:?}");
        }
        for rec in s.ready.iter().filter(|r| r.lane != Lane::Free) {
            assert!(s.busy.contains(&rec.lane), "a ready record owns its lane");
        }
        assert_eq!(s.waiting_len, s.waiting.values().map(VecDeque::len).sum::<usize>());
        // Pauses: a partition with held retries, or with too many behind a held lane.
        for (p, n) in &s.held_per_partition {
            assert_eq!(*n, s.held.values().filter(|r| r.partition == *p).count());
        }
        for (lane, waiting) in &s.waiting {
            if self.held_lanes.contains(&format!("{lane:?}")) && waiting.len() >= LIMITS.waiting_behind_held_lane {
                assert!(s.pauses(lane.partition().expect("an ordered lane")), "{lane:?} is crowded");
            }
        }
    }

    /// Settle everything: every record read is finished or dropped as stale.
    fn drain(&mut self) {
        for _ in 0..10_000 {
            for out in std::mem::take(&mut self.out) {
                if !out.released {
                    self.scheduler.lane_free(&out.rec.lane);
                }
                self.finished.insert(out.rec.id);
            }
            self.held_lanes.clear();
            self.now += Duration::from_secs(1);
            self.scheduler.release_due(self.now);
            while self.scheduler.has_ready() {
                self.take();
            }
            self.check();
            if self.out.is_empty() && self.scheduler.buffered() == 0 {
                break;
            }
        }
        let s = &self.scheduler;
        assert_eq!(s.buffered(), 0, "nothing left behind");
        assert!(s.busy.is_empty() && s.waiting.is_empty() && s.held_per_partition.is_empty());
        assert!(s.crowded.is_empty(), "no partition stays paused");
        assert_eq!(s.bytes, 0);
        assert_eq!(self.finished.len() + self.dropped.len(), self.arrived, "every record read reached an end");
        assert!(self.finished.is_disjoint(&self.dropped));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn every_record_ends_once_in_lane_order_within_the_limits(
        ordering in 0..3u8,
        ops in proptest::collection::vec(op(), 0..300),
    ) {
        let mut model = Model::new(ordering);
        for op in ops {
            model.step(op);
        }
        model.drain();
    }
}

fn rec(id: usize, lane: Lane, offset: i64) -> Rec {
    let partition = lane.partition().cloned().unwrap_or_else(|| partition("work", 0));
    Rec { id, lane, partition, offset, bytes: 10, epoch: 0, due: None }
}

fn take(s: &mut Scheduler<Rec>) -> Option<usize> {
    s.next_ready(|_| true).map(|r| r.id)
}

#[test]
fn a_lane_runs_one_record_at_a_time_in_offset_order_and_other_lanes_go_by() {
    let p = partition("work", 0);
    let (a, b) = (Lane::Key(p.clone(), b"a".to_vec()), Lane::Key(p.clone(), b"b".to_vec()));
    let mut s = Scheduler::new(LIMITS);
    s.arrive(rec(0, a.clone(), 0));
    s.arrive(rec(1, a.clone(), 1));
    s.arrive(rec(2, b.clone(), 2));
    assert_eq!(take(&mut s), Some(0));
    assert_eq!(take(&mut s), Some(2), "b goes by while a is busy");
    assert_eq!(take(&mut s), None);
    s.lane_free(&a);
    assert_eq!(take(&mut s), Some(1));
}

#[test]
fn lanes_of_topics_whose_names_hash_alike_stay_apart() {
    // A lane's hash takes its topic name's length only: these two collide.
    let (work, kept) = (Lane::Partition(partition("work", 3)), Lane::Partition(partition("kept", 3)));
    let mut s = Scheduler::new(LIMITS);
    s.arrive(rec(0, work.clone(), 0));
    s.arrive(rec(1, kept.clone(), 0));
    s.arrive(rec(2, work.clone(), 1));
    assert_eq!(take(&mut s), Some(0));
    assert_eq!(take(&mut s), Some(1), "the other topic's lane goes by");
    assert_eq!(take(&mut s), None, "the first lane is busy");
    s.lane_free(&work);
    assert_eq!(take(&mut s), Some(2));
}

#[test]
fn a_retry_record_is_held_and_its_partition_paused_until_due() {
    let retry = partition("retry", 0);
    let mut s = Scheduler::new(LIMITS);
    let now = Instant::now();
    let mut r = rec(0, Lane::Free, 0);
    r.partition = retry.clone();
    s.arrive_due(r, now + Duration::from_millis(300), now);
    assert!(s.take_pauses_changed() && s.pauses(&retry));
    assert_eq!(s.next_due(), Some(now + Duration::from_millis(300)));
    s.release_due(now + Duration::from_millis(299));
    assert_eq!(take(&mut s), None);
    s.release_due(now + Duration::from_millis(300));
    assert!(s.take_pauses_changed() && !s.pauses(&retry));
    assert_eq!(take(&mut s), Some(0));
}

#[test]
fn a_record_that_comes_back_goes_before_its_lanes_later_records() {
    let lane = Lane::Partition(partition("work", 0));
    let mut s = Scheduler::new(LIMITS);
    for i in 0..3 {
        s.arrive(rec(i, lane.clone(), i as i64));
    }
    let first = s.next_ready(|_| true).expect("first");
    s.redeliver(first, true);
    assert_eq!(take(&mut s), Some(0), "it kept its lane and goes first");
    // Its lane passed on early (released), then it failed: it queues before offset 2.
    s.lane_free(&lane);
    assert_eq!(take(&mut s), Some(1));
    s.redeliver(rec(0, lane.clone(), 0), false);
    s.lane_free(&lane);
    assert_eq!(take(&mut s), Some(0));
    s.lane_free(&lane);
    assert_eq!(take(&mut s), Some(2));
}

#[test]
fn records_piling_up_behind_a_held_lane_pause_its_partition_until_it_moves_on() {
    let p = partition("work", 0);
    let lane = Lane::Partition(p.clone());
    let mut s = Scheduler::new(LIMITS);
    s.arrive(rec(0, lane.clone(), 0));
    assert_eq!(take(&mut s), Some(0));
    s.hold(&lane, true);
    for i in 1..=LIMITS.waiting_behind_held_lane {
        assert!(!s.pauses(&p));
        s.arrive(rec(i, lane.clone(), i as i64));
    }
    assert!(s.take_pauses_changed() && s.pauses(&p));
    s.lane_free(&lane);
    assert!(s.take_pauses_changed() && !s.pauses(&p), "resumed once the held record moved on");
}

#[test]
fn a_full_buffer_that_hands_out_nothing_throttles_after_the_stall_and_resumes_half_empty() {
    let limits = Limits { records: 4, ..LIMITS };
    let lane = Lane::Partition(partition("work", 0));
    let mut s = Scheduler::new(limits);
    let now = Instant::now();
    for i in 0..4 {
        s.arrive(rec(i, lane.clone(), i as i64));
    }
    assert!(!s.reading());
    assert_eq!(s.throttle(now), Some(now + MAX_READ_STALL));
    assert_eq!(s.throttle(now + MAX_READ_STALL / 2), Some(now + MAX_READ_STALL), "the stall is counted from the start");
    assert_eq!(s.throttle(now + MAX_READ_STALL), None);
    assert!(s.throttled() && s.reading() && s.pauses(&lane.partition().cloned().expect("partition")));
    assert_eq!(take(&mut s), Some(0));
    s.throttle(now + MAX_READ_STALL);
    assert!(s.throttled(), "3 of 4 is not half empty");
    s.lane_free(&lane);
    assert_eq!(take(&mut s), Some(1));
    s.throttle(now + MAX_READ_STALL);
    assert!(s.throttled(), "2 of 4 is not below half");
    s.lane_free(&lane);
    assert_eq!(take(&mut s), Some(2));
    s.throttle(now + MAX_READ_STALL);
    assert!(!s.throttled() && s.reading());
}

#[test]
fn a_hand_out_restarts_the_stall() {
    let limits = Limits { records: 2, ..LIMITS };
    let mut s = Scheduler::new(limits);
    let now = Instant::now();
    s.arrive(rec(0, Lane::Free, 0));
    s.arrive(rec(1, Lane::Free, 1));
    s.throttle(now);
    assert_eq!(take(&mut s), Some(0));
    s.arrive(rec(2, Lane::Free, 2));
    let later = now + MAX_READ_STALL;
    assert_eq!(s.throttle(later), Some(later + MAX_READ_STALL));
}

#[test]
fn a_partition_stays_paused_while_another_held_lane_of_it_is_crowded() {
    let p = partition("work", 0);
    let (a, b) = (Lane::Key(p.clone(), b"a".to_vec()), Lane::Key(p.clone(), b"b".to_vec()));
    let mut s = Scheduler::new(LIMITS);
    let mut offset = 0;
    for lane in [&a, &b] {
        s.arrive(rec(offset as usize, lane.clone(), offset));
        offset += 1;
        assert!(s.next_ready(|_| true).is_some());
        s.hold(lane, true);
        for _ in 0..LIMITS.waiting_behind_held_lane {
            s.arrive(rec(offset as usize, lane.clone(), offset));
            offset += 1;
        }
    }
    assert!(s.pauses(&p));
    s.lane_free(&a);
    assert!(s.pauses(&p), "b's record still retries in place with a full lane behind it");
    s.lane_free(&b);
    assert!(!s.pauses(&p));
}
