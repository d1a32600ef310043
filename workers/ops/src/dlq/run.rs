//! Replay, park and purge: one loop over a [`DeadLetterStore`], the same on every broker.
//!
//! Records are read in batches; each matching record is decided on (replay, park, drop)
//! and the batch is settled atomically, so a crash loses or repeats nothing. Records that
//! do not match, name another queue as their source (replay, see [`destination`]), or
//! cannot be handled (not a Courier record, unknown destination), stay where they are.

use std::{collections::HashMap, time::Duration};

use tokio::time::Instant;

use crate::dlq::{DeadLetterError, DeadLetterStore, Filter, Record, Settlement, destination};
use courier::{contract::headers as h, transport::Message};

/// What to do with the matching records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Republish each record to the worker's work queue (or `to`), without its failure
    /// headers, with `courier-replay-count` + 1 and the attempt count starting again.
    Replay {
        /// The worker's work queue: where records go, and the only source a record may
        /// name when `to` is not given ([`destination`]).
        own: String,
        /// The operator's `--to`: every record goes there, whatever source it names.
        to: Option<String>,
        /// Loop guard: a record already replayed this many times is parked instead
        /// (`None`: no guard, for replaying from the parking queue).
        max_replays: Option<u32>,
        /// The parking queue.
        parking: String,
    },
    /// Move each record, unchanged, to the parking queue.
    Park {
        /// The parking queue.
        parking: String,
    },
    /// Delete each record.
    Purge,
}

/// How to run an operation.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Which records.
    pub filter: Filter,
    /// Handle at most this many records.
    pub limit: Option<u64>,
    /// At most this many records per second.
    pub rate: Option<u32>,
    /// Decide and report, but change nothing.
    pub dry_run: bool,
    /// Records per atomic batch.
    pub batch: usize,
}

/// What happened to each record read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records read from the queue.
    pub read: u64,
    /// Republished to their source.
    pub replayed: u64,
    /// Moved to the parking queue (by `park`, or by the loop guard).
    pub parked: u64,
    /// Deleted.
    pub purged: u64,
    /// Left in place: read, but they did not match the filter (or the limit was reached
    /// within their batch; records after it are not read at all).
    pub skipped: u64,
    /// Left in place by a replay: they name another queue as their source (see the
    /// messages printed; `--to` replays them).
    pub elsewhere: u64,
    /// Left in place: they could not be handled (see the messages printed).
    pub failed: u64,
}

/// What became of one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Republished to this queue/topic.
    Replay(String),
    /// Moved to this parking queue/topic (`guard`: by the loop guard).
    Park {
        /// The parking queue.
        to: String,
        /// Parked by the loop guard rather than by `park`.
        guard: bool,
    },
    /// Deleted.
    Purge,
}

/// Reported while running.
#[derive(Debug)]
pub enum Event<'a> {
    /// This record is (dry run: would be) handled so.
    Planned(&'a Record, &'a Action),
    /// This record stays where it is: it names another queue as its source.
    Elsewhere(&'a Record, &'a destination::Elsewhere),
    /// This record stays where it is, for this reason.
    Failed(&'a Record, &'a str),
    /// A batch was settled (or, in a dry run, decided).
    Progress(&'a Summary),
}

/// Run `operation` over the records of `store` that match.
pub async fn run<S: DeadLetterStore>(
    store: &mut S,
    operation: &Operation,
    options: &RunOptions,
    observe: &mut (dyn FnMut(Event<'_>) + Send),
) -> Result<Summary, DeadLetterError> {
    let mut summary = Summary::default();
    let mut destinations: HashMap<String, bool> = HashMap::new();
    let batch_size = options.batch.max(1).min(options.rate.map_or(usize::MAX, |r| r.max(1) as usize));
    let started = Instant::now();
    loop {
        // At the limit, stop reading: on RabbitMQ every record read stays unacked until close.
        if options.limit.is_some_and(|limit| summary.replayed + summary.parked + summary.purged >= limit) {
            return Ok(summary);
        }
        let records = store.next_batch(batch_size).await?;
        if records.is_empty() {
            return Ok(summary);
        }
        let mut batch = Vec::with_capacity(records.len());
        for record in &records {
            summary.read += 1;
            let handled = summary.replayed + summary.parked + summary.purged;
            if !options.filter.matches(&record.message) || options.limit.is_some_and(|limit| handled >= limit) {
                summary.skipped += 1;
                continue;
            }
            let (action, output) = match decide(operation, &record.message) {
                Ok(Decision::Handle(action, output)) => (action, output),
                Ok(Decision::Elsewhere(elsewhere)) => {
                    // Not settled: on RabbitMQ it returns to its place when the channel
                    // closes, on Kafka it gets no ledger entry; either way it stays pending.
                    summary.elsewhere += 1;
                    observe(Event::Elsewhere(record, &elsewhere));
                    continue;
                }
                Err(reason) => {
                    summary.failed += 1;
                    observe(Event::Failed(record, &reason));
                    continue;
                }
            };
            if let Some((destination, _)) = &output {
                if !destinations.contains_key(destination) {
                    let exists = store.exists(destination).await?;
                    destinations.insert(destination.clone(), exists);
                }
                if destinations.get(destination) != Some(&true) {
                    summary.failed += 1;
                    observe(Event::Failed(record, &format!("no queue or topic named `{destination}`")));
                    continue;
                }
            }
            match &action {
                Action::Replay(_) => summary.replayed += 1,
                Action::Park { .. } => summary.parked += 1,
                Action::Purge => summary.purged += 1,
            }
            observe(Event::Planned(record, &action));
            batch.push(Settlement { id: record.id, output });
        }
        if !options.dry_run && !batch.is_empty() {
            store.settle(batch).await?;
        }
        observe(Event::Progress(&summary));
        if let Some(rate) = options.rate.filter(|_| !options.dry_run) {
            let handled = summary.replayed + summary.parked + summary.purged;
            let due = Duration::from_secs_f64(handled as f64 / f64::from(rate.max(1)));
            tokio::time::sleep(due.saturating_sub(started.elapsed())).await;
        }
    }
}

/// What to do with one record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// This action, publishing this message (if any) in the record's batch.
    Handle(Action, Option<(String, Message)>),
    /// Leave it where it is: it names another queue as its source.
    Elsewhere(destination::Elsewhere),
}

/// The decision for one record, or why it cannot be handled.
pub fn decide(operation: &Operation, record: &Message) -> Result<Decision, String> {
    match operation {
        Operation::Purge => Ok(Decision::Handle(Action::Purge, None)),
        Operation::Park { parking } => Ok(Decision::Handle(
            Action::Park { to: parking.clone(), guard: false },
            Some((parking.clone(), record.clone())),
        )),
        Operation::Replay { own, to, max_replays, parking } => {
            let source = record
                .headers
                .get(h::FAILURE_SOURCE)
                // Dead-lettered by RabbitMQ itself (a quorum queue's delivery limit).
                .or_else(|| record.headers.get(h::X_FIRST_DEATH_QUEUE))
                .filter(|s| !s.trim().is_empty())
                .ok_or_else(|| format!("no `{}` header: not a Courier dead-letter record", h::FAILURE_SOURCE))?;
            // Checked before the loop guard: a record naming another queue is left alone,
            // not even parked.
            let destination = match destination::destination(own, to.as_deref(), source) {
                Ok(destination) => destination.to_owned(),
                Err(elsewhere) => return Ok(Decision::Elsewhere(elsewhere)),
            };
            let replays = match record.headers.get(h::REPLAY_COUNT) {
                None => 0,
                Some(v) => v
                    .trim()
                    .parse::<u128>()
                    .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                    .map_err(|_| format!("`{}` is {v:?}, not a count", h::REPLAY_COUNT))?,
            };
            if max_replays.is_some_and(|max| replays >= max) {
                return Ok(Decision::Handle(
                    Action::Park { to: parking.clone(), guard: true },
                    Some((parking.clone(), record.clone())),
                ));
            }
            let mut headers = record.headers.clone();
            for name in h::FAILURE_HEADERS.iter().chain([&h::ATTEMPT]) {
                headers.remove(name);
            }
            // The broker's own dead-lettering headers belong to that death, not the replay.
            let broker_owned: Vec<String> = headers
                .keys()
                .filter(|name| name.starts_with("x-first-death-") || name.starts_with("x-last-death-"))
                .map(|name| name.to_string())
                .collect();
            for name in broker_owned {
                headers.remove(&name);
            }
            headers.insert(h::REPLAY_COUNT.into(), replays.saturating_add(1).to_string());
            let replay = Message { payload: record.payload.clone(), headers, key: record.key.clone() };
            Ok(Decision::Handle(Action::Replay(destination.clone()), Some((destination, replay))))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use super::*;
    use courier::transport::dead_letters::RecordId;

    /// A queue in a Vec: settled records leave it, outputs are collected.
    #[derive(Default)]
    struct VecStore {
        records: VecDeque<Record>,
        unread: VecDeque<Record>,
        published: Vec<(String, Message)>,
        queues: Vec<String>,
        batches: usize,
    }

    impl VecStore {
        fn new(records: Vec<Message>, queues: &[&str]) -> Self {
            let records: VecDeque<Record> = records
                .into_iter()
                .enumerate()
                .map(|(i, message)| Record { id: RecordId::Position(i as u64 + 1), message })
                .collect();
            Self {
                unread: records.clone(),
                records,
                queues: queues.iter().map(|q| (*q).to_owned()).collect(),
                ..Self::default()
            }
        }
    }

    impl DeadLetterStore for VecStore {
        fn pending(&self) -> Option<u64> {
            Some(self.records.len() as u64)
        }
        async fn next_batch(&mut self, max: usize) -> Result<Vec<Record>, DeadLetterError> {
            let n = max.min(self.unread.len());
            Ok(self.unread.drain(..n).collect())
        }
        async fn exists(&mut self, destination: &str) -> Result<bool, DeadLetterError> {
            Ok(self.queues.iter().any(|q| q == destination))
        }
        async fn settle(&mut self, batch: Vec<Settlement>) -> Result<(), DeadLetterError> {
            self.batches += 1;
            for settlement in batch {
                self.records.retain(|r| r.id != settlement.id);
                self.published.extend(settlement.output);
            }
            Ok(())
        }
        async fn close(self) -> Result<(), DeadLetterError> {
            Ok(())
        }
    }

    fn dead_letter(source: &str, kind: &str, replays: Option<u32>) -> Message {
        let mut headers: h::Headers = [
            (h::FAILURE_SOURCE, source),
            (h::FAILURE_KIND, kind),
            (h::FAILURE_ATTEMPTS, "9"),
            (h::ATTEMPT, "4"),
            (h::CORRELATION_ID, "c-1"),
        ]
        .into_iter()
        .map(|(k, v)| (k.into(), v.to_owned()))
        .collect();
        if let Some(n) = replays {
            headers.insert(h::REPLAY_COUNT.into(), n.to_string());
        }
        Message { payload: "{\"name\":\"Ada\"}".into(), headers, key: Some("k".into()) }
    }

    fn replay() -> Operation {
        replay_to(None, Some(2))
    }

    fn replay_to(to: Option<&str>, max_replays: Option<u32>) -> Operation {
        Operation::Replay { own: "q".into(), to: to.map(str::to_owned), max_replays, parking: "q.parking".into() }
    }

    fn options() -> RunOptions {
        RunOptions { batch: 2, ..RunOptions::default() }
    }

    async fn go(store: &mut VecStore, operation: &Operation, options: &RunOptions) -> Summary {
        run(store, operation, options, &mut |_| {}).await.expect("run")
    }

    #[tokio::test]
    async fn replay_strips_failure_headers_and_counts_the_replay() {
        let mut store = VecStore::new(vec![dead_letter("q", "transient", None)], &["q", "q.parking"]);
        let summary = go(&mut store, &replay(), &options()).await;
        assert_eq!((summary.replayed, store.records.len()), (1, 0));
        let (to, message) = &store.published[0];
        assert_eq!(to, "q");
        assert_eq!(message.headers.get(h::REPLAY_COUNT).map(String::as_str), Some("1"));
        assert_eq!(message.headers.get(h::CORRELATION_ID).map(String::as_str), Some("c-1"));
        assert!(h::FAILURE_HEADERS.iter().chain([&h::ATTEMPT]).all(|name| !message.headers.contains_key(name)));
        assert_eq!(message.key.as_deref(), Some(&b"k"[..]));
    }

    #[tokio::test]
    async fn retry_tier_sources_replay_to_the_work_queue() {
        let mut store = VecStore::new(vec![dead_letter("q.retry.5s", "transient", None)], &["q"]);
        go(&mut store, &replay(), &options()).await;
        assert_eq!(store.published[0].0, "q");
    }

    #[tokio::test]
    async fn the_loop_guard_parks_records_replayed_too_often() {
        let records = vec![dead_letter("q", "transient", Some(1)), dead_letter("q", "transient", Some(2))];
        let mut store = VecStore::new(records, &["q", "q.parking"]);
        let summary = go(&mut store, &replay(), &options()).await;
        assert_eq!((summary.replayed, summary.parked), (1, 1));
        assert_eq!(store.published[1].0, "q.parking");
        // Parked unchanged, failure headers and all, so it can be inspected there.
        assert_eq!(store.published[1].1, dead_letter("q", "transient", Some(2)));
        // Replaying from the parking queue has no guard.
        let mut parked = VecStore::new(vec![dead_letter("q", "transient", Some(7))], &["q"]);
        let unguarded = replay_to(None, None);
        assert_eq!(go(&mut parked, &unguarded, &options()).await.replayed, 1);
    }

    #[tokio::test]
    async fn filters_limits_and_dry_runs_leave_the_rest_in_place() {
        let records = vec![
            dead_letter("q", "transient", None),
            dead_letter("q", "schema", None),
            dead_letter("q", "transient", None),
            dead_letter("q", "transient", None),
        ];
        let only_transient = RunOptions {
            filter: Filter { kind: Some("transient".into()), ..Filter::default() },
            limit: Some(2),
            ..options()
        };
        let mut store = VecStore::new(records.clone(), &["q"]);
        let summary = go(&mut store, &replay(), &only_transient).await;
        assert_eq!((summary.read, summary.replayed, summary.skipped), (4, 2, 2));
        let left: Vec<RecordId> = store.records.iter().map(|r| r.id).collect();
        assert_eq!(left, [RecordId::Position(2), RecordId::Position(4)]);

        // At the limit, reading stops (RabbitMQ holds every record read until the end).
        let mut big = VecStore::new(records.iter().cycle().take(40).cloned().collect(), &["q"]);
        let one = RunOptions { limit: Some(1), ..options() };
        assert_eq!(go(&mut big, &replay(), &one).await.read, 2, "one batch of two, then stop");

        let mut untouched = VecStore::new(records, &["q"]);
        let dry = RunOptions { dry_run: true, ..options() };
        assert_eq!(go(&mut untouched, &replay(), &dry).await.replayed, 4);
        assert_eq!((untouched.records.len(), untouched.published.len(), untouched.batches), (4, 0, 0));
    }

    #[tokio::test]
    async fn records_that_cannot_be_replayed_stay_and_are_reported() {
        let foreign = Message { payload: "x".into(), ..Message::default() };
        let mut bad_count = dead_letter("q", "transient", None);
        bad_count.headers.insert(h::REPLAY_COUNT.into(), "lots".into());
        let records = vec![foreign, bad_count, dead_letter("q", "decode", None)];
        let failures = |records: Vec<Message>, operation: Operation| async move {
            let mut store = VecStore::new(records, &["q"]);
            let mut reasons = Vec::new();
            let summary = run(&mut store, &operation, &options(), &mut |event| {
                if let Event::Failed(_, reason) = event {
                    reasons.push(reason.to_owned());
                }
            })
            .await
            .expect("run");
            (summary.failed, summary.replayed, store.records.len(), reasons)
        };
        let (failed, replayed, left, reasons) = failures(records, replay()).await;
        assert_eq!((failed, replayed, left), (2, 1, 2));
        assert!(reasons[0].contains("not a Courier dead-letter record"), "{reasons:?}");
        assert!(reasons[1].contains("not a count"), "{reasons:?}");
        let to_nowhere = replay_to(Some("gone"), Some(2));
        let (failed, replayed, left, reasons) = failures(vec![dead_letter("q", "transient", None)], to_nowhere).await;
        assert_eq!((failed, replayed, left), (1, 0, 1));
        assert!(reasons[0].contains("no queue or topic named `gone`"), "{reasons:?}");
    }

    /// Issue 30: a record published straight into the dead-letter queue naming another
    /// worker's queue is not replayed there (nor parked), but left and reported; `--to`
    /// is the operator's explicit choice.
    #[tokio::test]
    async fn records_naming_another_source_stay_and_are_reported() {
        let mut delivery_limit = Message { payload: "x".into(), ..Message::default() };
        delivery_limit.headers.insert(h::X_FIRST_DEATH_QUEUE.into(), "ledger.requests".into());
        delivery_limit.headers.insert(h::X_FIRST_DEATH_REASON.into(), "delivery_limit".into());
        let records = vec![
            dead_letter("ledger.requests", "transient", None),
            dead_letter("q", "transient", None),
            delivery_limit,
            dead_letter("ledger.requests.retry.5s", "transient", Some(9)),
        ];
        let queues = ["q", "q.parking", "ledger.requests"];
        for dry_run in [true, false] {
            let mut store = VecStore::new(records.clone(), &queues);
            let mut reported = Vec::new();
            let options = RunOptions { dry_run, ..options() };
            let summary = run(&mut store, &replay(), &options, &mut |event| {
                if let Event::Elsewhere(record, elsewhere) = event {
                    reported.push((record.id, elsewhere.source_queue.clone()));
                }
            })
            .await
            .expect("run");
            assert_eq!((summary.read, summary.replayed, summary.elsewhere, summary.parked), (4, 1, 3, 0));
            assert_eq!((summary.skipped, summary.failed), (0, 0));
            let names = ["ledger.requests", "ledger.requests", "ledger.requests.retry.5s"];
            let ids = [RecordId::Position(1), RecordId::Position(3), RecordId::Position(4)];
            assert_eq!(reported, ids.into_iter().zip(names.map(String::from)).collect::<Vec<_>>());
            let published: Vec<&str> = store.published.iter().map(|(to, _)| to.as_str()).collect();
            assert_eq!(published, if dry_run { vec![] } else { vec!["q"] });
            let left: Vec<RecordId> = store.records.iter().map(|r| r.id).collect();
            let expected: Vec<RecordId> =
                if dry_run { (1..=4).map(RecordId::Position).collect() } else { ids.to_vec() };
            assert_eq!(left, expected, "the other queue's records stay, in order");
        }

        // With --to, every record goes there, whatever it names; the loop guard still parks.
        let mut store = VecStore::new(records, &queues);
        let to = replay_to(Some("ledger.requests"), Some(2));
        let summary = go(&mut store, &to, &options()).await;
        assert_eq!((summary.replayed, summary.parked, summary.elsewhere, store.records.len()), (3, 1, 0, 0));
        let published: Vec<&str> = store.published.iter().map(|(to, _)| to.as_str()).collect();
        assert_eq!(published, ["ledger.requests", "ledger.requests", "ledger.requests", "q.parking"]);
    }

    #[tokio::test]
    async fn park_and_purge_move_and_drop() {
        let records = vec![dead_letter("q", "transient", None), dead_letter("q", "schema", None)];
        let mut store = VecStore::new(records.clone(), &["q.parking"]);
        let summary = go(&mut store, &Operation::Park { parking: "q.parking".into() }, &options()).await;
        assert_eq!((summary.parked, store.records.len()), (2, 0));
        assert_eq!(
            store.published,
            vec![("q.parking".to_owned(), records[0].clone()), ("q.parking".into(), records[1].clone())]
        );
        let mut store = VecStore::new(records, &[]);
        let summary = go(&mut store, &Operation::Purge, &options()).await;
        assert_eq!((summary.purged, store.records.len(), store.published.len()), (2, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn the_rate_limit_paces_batches() {
        let records = (0..10).map(|_| dead_letter("q", "transient", None)).collect();
        let mut store = VecStore::new(records, &["q"]);
        let started = tokio::time::Instant::now();
        let paced = RunOptions { rate: Some(5), batch: 100, ..RunOptions::default() };
        go(&mut store, &replay(), &paced).await;
        assert_eq!(store.batches, 2, "batches no larger than one second's worth");
        assert_eq!(started.elapsed(), Duration::from_secs(2));
    }
}
