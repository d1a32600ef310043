//! The queues the console shows, and what it does with them through the same dead-letter
//! store and run loop as `courier dlq`: read every record (removing and reordering
//! nothing), preview an action (a dry run), run one (rate-limited, crash-safe batches, the
//! loop guard, only the worker's own work queue as a replay's destination).
//!
//! One reader or action at a time per queue: on RabbitMQ a record read stays unacked,
//! invisible to a second reader, until the first one closes. A page that finds an action
//! running on its queue says so instead of waiting for it.

use std::{
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use courier::{Broker, contract::naming};
use tokio::sync::OwnedMutexGuard;

use super::{jobs::Job, scan::Selection, until::Until};
use crate::dlq::{self, DeadLetterStore as _, Filter, Operation, Record, RunOptions, Summary, run::Event};

/// Records read per batch while scanning.
const SCAN_BATCH: usize = 500;
/// Records per atomic batch of an action.
const ACTION_BATCH: usize = 100;
/// Planned records a preview lists.
const PREVIEW_LINES: usize = 20;

/// A worker's dead-letter queue or its parking queue.
#[derive(Debug)]
pub struct Queue {
    /// The worker it belongs to.
    pub worker: String,
    /// Which of the two.
    pub which: Which,
    /// Its name on the broker.
    pub name: String,
    /// The worker's work queue: a replay's only destination.
    pub work_queue: String,
    /// The worker's parking queue.
    pub parking: String,
    /// One reader or action at a time.
    lock: Arc<tokio::sync::Mutex<()>>,
    /// The action running on it, if any.
    running: Mutex<Option<Arc<Job>>>,
}

/// Which queue of a worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Which {
    /// Its dead-letter queue.
    DeadLetters,
    /// Its parking queue.
    Parking,
}

impl Which {
    /// Its name in addresses.
    pub fn slug(self) -> &'static str {
        match self {
            Self::DeadLetters => "dlq",
            Self::Parking => "parking",
        }
    }

    /// Its name on pages.
    pub fn label(self) -> &'static str {
        match self {
            Self::DeadLetters => "dead-letter queue",
            Self::Parking => "parking queue",
        }
    }
}

/// An action on records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Back to the worker's work queue.
    Replay,
    /// To the parking queue.
    Park,
    /// Deleted.
    Purge,
}

impl Action {
    /// From a form's value.
    pub fn parse(value: &str) -> Option<Self> {
        match value {
            "replay" => Some(Self::Replay),
            "park" => Some(Self::Park),
            "purge" => Some(Self::Purge),
            _ => None,
        }
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Replay => "replay",
            Self::Park => "park",
            Self::Purge => "purge",
        }
    }
}

/// Why a queue could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// An action runs on it.
    #[error("an action runs on this queue")]
    Busy(Arc<Job>),
    /// Another reader held it longer than the scan's bound.
    #[error("another page or action held this queue for longer than {0:?}: try again")]
    Waited(Duration),
    /// The broker said no.
    #[error(transparent)]
    Store(#[from] dlq::DeadLetterError),
    /// What was asked cannot be done here.
    #[error("{0}")]
    Refused(String),
}

/// The bounds of an action.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// The loop guard of a replay from a dead-letter queue.
    pub max_replays: u32,
    /// Records per second.
    pub rate: u32,
    /// How long to wait for a page reading the queue.
    pub wait: Duration,
}

/// How a scan went.
#[derive(Clone, Copy, Debug)]
pub struct Scanned {
    /// Records read.
    pub read: u64,
    /// The time bound ended it before the last record.
    pub partial: bool,
    /// How long it took.
    pub took: Duration,
}

/// What a dry run found.
#[derive(Clone, Debug, Default)]
pub struct Preview {
    /// What would become of the records read.
    pub summary: Summary,
    /// The first planned records: `(record, what would happen)`.
    pub planned: Vec<(String, String)>,
    /// The first records that would stay, and why.
    pub staying: Vec<(String, String)>,
    /// The time bound ended it before the last record.
    pub partial: bool,
}

impl Queue {
    /// The two queues of `worker`, whose work queue is `work_queue`.
    pub fn of(worker: &str, work_queue: &str) -> [Self; 2] {
        let make = |which: Which, name: String| Self {
            worker: worker.to_owned(),
            which,
            name,
            work_queue: work_queue.to_owned(),
            parking: naming::parking(work_queue),
            lock: Arc::default(),
            running: Mutex::new(None),
        };
        [make(Which::DeadLetters, naming::dead_letter(work_queue)), make(Which::Parking, naming::parking(work_queue))]
    }

    /// The action running on it, if any.
    pub fn running(&self) -> Option<Arc<Job>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner).clone().filter(|job| job.running())
    }

    /// Hold the queue: at once while no action runs, else [`QueueError::Busy`].
    async fn hold(&self, wait: Duration) -> Result<OwnedMutexGuard<()>, QueueError> {
        if let Some(job) = self.running() {
            return Err(QueueError::Busy(job));
        }
        let held = tokio::time::timeout(wait, Arc::clone(&self.lock).lock_owned()).await;
        let guard = held.map_err(|_| QueueError::Waited(wait))?;
        if let Some(job) = self.running() {
            return Err(QueueError::Busy(job));
        }
        Ok(guard)
    }

    /// Visit every record (for at most `bound`), removing and reordering nothing.
    pub async fn scan(
        &self,
        broker: &Broker,
        bound: Duration,
        mut visit: impl FnMut(&Record),
    ) -> Result<Scanned, QueueError> {
        let started = Instant::now();
        let _held = self.hold(bound).await?;
        let mut store = dlq::open(broker, &self.name, false).await?;
        let mut until = Until::new(&mut store, (started + bound).into());
        let mut read = 0;
        let outcome = loop {
            match until.next_batch(SCAN_BATCH).await {
                Ok(batch) if batch.is_empty() => break Ok(()),
                Ok(batch) => {
                    read += batch.len() as u64;
                    batch.iter().for_each(&mut visit);
                }
                Err(error) => break Err(error),
            }
        };
        let partial = until.ran_out;
        let closed = store.close().await;
        outcome?;
        closed?;
        Ok(Scanned { read, partial, took: started.elapsed() })
    }

    /// The operation `action` is on this queue, as `courier dlq` builds it.
    fn operation(&self, action: Action, max_replays: u32) -> Result<Operation, QueueError> {
        Ok(match (action, self.which) {
            (Action::Replay, which) => Operation::Replay {
                own: self.work_queue.clone(),
                to: None,
                max_replays: (which == Which::DeadLetters).then_some(max_replays),
                parking: self.parking.clone(),
            },
            (Action::Park, Which::DeadLetters) => Operation::Park { parking: self.parking.clone() },
            (Action::Park, Which::Parking) => {
                return Err(QueueError::Refused("these records are parked already".into()));
            }
            (Action::Purge, _) => Operation::Purge,
        })
    }

    /// Where `action` sends records, in words.
    pub fn destination(&self, action: Action, max_replays: u32) -> String {
        match (action, self.which) {
            (Action::Replay, Which::DeadLetters) => format!(
                "{} (the worker's work queue); records already replayed {max_replays} times go to {} instead",
                self.work_queue, self.parking
            ),
            (Action::Replay, Which::Parking) => format!("{} (the worker's work queue)", self.work_queue),
            (Action::Park, _) => self.parking.clone(),
            (Action::Purge, _) => "nowhere: deleted".to_owned(),
        }
    }

    /// What `action` on `selection` would do, changing nothing.
    pub async fn preview(
        &self,
        broker: &Broker,
        action: Action,
        selection: &Selection,
        max_replays: u32,
        bound: Duration,
    ) -> Result<Preview, QueueError> {
        let operation = self.operation(action, max_replays)?;
        let options = options(selection, None, true)?;
        let _held = self.hold(bound).await?;
        let mut store = dlq::open(broker, &self.name, false).await?;
        let mut preview = Preview::default();
        let mut observe = |event: Event<'_>| match event {
            Event::Planned(record, planned) if preview.planned.len() < PREVIEW_LINES => {
                preview.planned.push((record_name(record), describe(planned)));
            }
            Event::Elsewhere(record, why) if preview.staying.len() < PREVIEW_LINES => {
                preview.staying.push((
                    record_name(record),
                    courier::contract::headers::truncate(&why.to_string(), 300).to_owned(),
                ));
            }
            Event::Failed(record, why) if preview.staying.len() < PREVIEW_LINES => {
                preview.staying.push((record_name(record), courier::contract::headers::truncate(why, 300).to_owned()));
            }
            _ => {}
        };
        let mut until = Until::new(&mut store, tokio::time::Instant::now() + bound);
        let ran = dlq::run::run(&mut until, &operation, &options, &mut observe).await;
        let partial = until.ran_out;
        let closed = store.close().await;
        preview.summary = ran?;
        preview.partial = partial;
        closed?;
        Ok(preview)
    }

    /// Start `action` on `selection` as the job `job` records once the queue is held (a
    /// page's read of it waited for at most `limits.wait`); returns at once.
    pub async fn start(
        self: &Arc<Self>,
        broker: &Broker,
        action: Action,
        selection: &Selection,
        limits: Limits,
        job: impl FnOnce() -> Arc<Job>,
    ) -> Result<Arc<Job>, QueueError> {
        let operation = self.operation(action, limits.max_replays)?;
        let options = options(selection, Some(limits.rate), false)?;
        let held = self.hold(limits.wait).await?;
        // Recorded only once it holds the queue: a refused action leaves no job behind.
        let job = job();
        *self.running.lock().unwrap_or_else(PoisonError::into_inner) = Some(Arc::clone(&job));
        let started = Arc::clone(&job);
        let (queue, broker) = (Arc::clone(self), broker.clone());
        tokio::spawn(async move {
            let _held = held;
            // Ended even if the run panics: a job left running would hold the queue for good.
            let _ended = EndOnDrop(Arc::clone(&job));
            let outcome = async {
                let mut store = dlq::open(&broker, &queue.name, true).await?;
                let mut observe = |event: Event<'_>| {
                    if let Event::Progress(summary) = event {
                        job.progress(*summary);
                    }
                };
                let ran = dlq::run::run(&mut store, &operation, &options, &mut observe).await;
                let closed = store.close().await;
                let summary = ran?;
                closed?;
                Ok::<_, dlq::DeadLetterError>(summary)
            }
            .await;
            let s = outcome.as_ref().ok().copied().unwrap_or_else(|| job.state().summary);
            match &outcome {
                Ok(_) => tracing::info!(
                    job = job.id, operator = %job.plan.operator, action = job.plan.action, queue = %job.plan.queue,
                    selection = %job.plan.selection, read = s.read, replayed = s.replayed, parked = s.parked,
                    purged = s.purged, skipped = s.skipped, elsewhere = s.elsewhere, failed = s.failed,
                    "Console action finished."
                ),
                Err(error) => tracing::warn!(
                    job = job.id, operator = %job.plan.operator, action = job.plan.action, queue = %job.plan.queue,
                    %error, read = s.read, replayed = s.replayed, parked = s.parked, purged = s.purged,
                    "Console action failed; every batch settled before the error stays settled."
                ),
            }
            job.end(outcome.map_err(|error| error.to_string()));
        });
        Ok(started)
    }
}

/// Ends its job as failed when dropped while the job still runs.
struct EndOnDrop(Arc<Job>);

impl Drop for EndOnDrop {
    fn drop(&mut self) {
        if self.0.running() {
            self.0.end(Err("the action stopped unexpectedly (see the console's log)".into()));
        }
    }
}

/// The run options of an action on `selection`.
fn options(selection: &Selection, rate: Option<u32>, dry_run: bool) -> Result<RunOptions, QueueError> {
    if selection.fingerprint.as_deref() == Some("") && selection.message_id.is_none() {
        return Err(QueueError::Refused(
            "records without a failure fingerprint are not Courier's: act on them one message at a time, or with \
             `courier dlq`"
                .into(),
        ));
    }
    let filter = Filter {
        fingerprint: selection.fingerprint.clone().filter(|f| !f.is_empty()),
        message_id: selection.message_id.clone(),
        ..Filter::default()
    };
    Ok(RunOptions { filter, limit: None, rate, dry_run, batch: ACTION_BATCH })
}

fn record_name(record: &Record) -> String {
    let id = record.message.headers.get(courier::contract::headers::MESSAGE_ID);
    match id {
        Some(id) => format!("{} (message {})", record.id, courier::contract::headers::truncate(id, 200)),
        None => record.id.to_string(),
    }
}

fn describe(action: &dlq::run::Action) -> String {
    match action {
        dlq::run::Action::Replay(to) => format!("replay to {to}"),
        dlq::run::Action::Park { to, guard: true } => format!("park in {to} (replayed too often)"),
        dlq::run::Action::Park { to, guard: false } => format!("park in {to}"),
        dlq::run::Action::Purge => "delete".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_workers_queues_and_where_actions_send_their_records() {
        let [dlq, parking] = Queue::of("greeter", "greeter.requests");
        assert_eq!((dlq.name.as_str(), parking.name.as_str()), ("greeter.requests.dlq", "greeter.requests.parking"));
        assert_eq!(
            dlq.operation(Action::Replay, 3).ok(),
            Some(Operation::Replay {
                own: "greeter.requests".into(),
                to: None,
                max_replays: Some(3),
                parking: "greeter.requests.parking".into()
            })
        );
        assert!(matches!(parking.operation(Action::Replay, 3), Ok(Operation::Replay { max_replays: None, .. })));
        assert!(matches!(parking.operation(Action::Park, 3), Err(QueueError::Refused(_))));
        assert!(dlq.destination(Action::Replay, 3).starts_with("greeter.requests (the worker's work queue)"));
    }

    #[test]
    fn a_selection_becomes_the_clis_filter() {
        let group = Selection { fingerprint: Some("f".into()), message_id: None };
        let grouped = options(&group, Some(50), false).expect("a group");
        assert_eq!(
            (grouped.filter.fingerprint.as_deref(), grouped.rate, grouped.dry_run),
            (Some("f"), Some(50), false)
        );
        let every = options(&Selection::default(), None, true).expect("every record");
        assert!(every.filter.is_empty());
        let unnamed = Selection { fingerprint: Some(String::new()), message_id: None };
        assert!(matches!(options(&unnamed, None, true), Err(QueueError::Refused(_))));
        let one = Selection { fingerprint: Some(String::new()), message_id: Some("m".into()) };
        assert_eq!(options(&one, None, true).expect("one message").filter.message_id.as_deref(), Some("m"));
        assert_eq!(Action::parse("replay"), Some(Action::Replay));
        assert_eq!(Action::parse("drop table"), None);
    }
}
