//! Batches (`--batch-size`, `--batch-wait`): requests admitted one by one, each in its own
//! delivery and handler slot, are handed to the handler together, and each gets its own
//! result back to take its own path (reply, retry, dead letter, ack).
//!
//! A batch forms as requests arrive. The request that fills it runs it at once; otherwise,
//! when the first one has waited `--batch-wait`, whichever of its requests wakes first runs
//! it with what it has. A request is in one batch per handler call: an in-process retry
//! joins a later batch. Before the call, a request whose deadline passed while the batch
//! filled is taken out (`expired`); with `--inbox` the batch is claimed, handled and
//! committed in one database transaction (`inbox/batch.rs`), and a request answered before
//! is answered from the inbox without entering the call.
//!
//! A whole call that fails (an error, a panic, a timeout) fails each of its requests
//! transiently, and counts once for the circuit breaker: a call's requests share a
//! [`Tally`]. After a panic or a timeout, which one request may cause, each is retried
//! alone: then only the request that panics its call is dead-lettered
//! (`handler_panicked`).

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::SystemTime,
};

use bytes::Bytes;
use tokio::{sync::oneshot, time::Instant};
use tracing::{Instrument, info_span};

use super::{INBOX, Pipeline, records};
use crate::{
    breaker::Call,
    config::BatchSettings,
    contract::{codec::Codec, failure::code},
    handler::{Context, Handler, HandlerError, panic_message, wrong_count},
    inbox::{BatchClaim, InboxError, Stored, Transaction},
    transport::Transport,
};

/// The batch forming now, shared by the deliveries.
pub(super) struct Batches<H: Handler> {
    /// Size and wait.
    settings: BatchSettings,
    /// The requests waiting for their call.
    forming: Mutex<Forming<H>>,
}

/// The batch that is forming.
struct Forming<H: Handler> {
    entries: Vec<Entry<H>>,
    /// Batches taken so far: a request waiting for batch `n` runs it only if it is still
    /// the one forming.
    taken: u64,
    /// When the forming batch is run with what it has.
    due: Instant,
}

/// One request in a batch.
struct Entry<H: Handler> {
    request: H::Request,
    context: Context,
    /// What the inbox claims for it (with `--inbox` and a message id).
    claim: Option<Claimable>,
    /// The request's span, which the batch's span follows from.
    span: tracing::Span,
    answer: oneshot::Sender<Answer<H::Reply>>,
}

/// What the inbox needs to claim a request of a batch and store its reply.
#[derive(Clone, Debug)]
pub(super) struct Claimable {
    /// The request's `courier-message-id`.
    pub(super) message_id: String,
    /// Its payload, whose digest the inbox keeps.
    pub(super) payload: Bytes,
    /// The codec its reply is stored in.
    pub(super) codec: Codec,
}

/// A request's outcome of its batch.
#[derive(Debug)]
pub(super) enum Answer<R> {
    /// The handler's result for it; the tally its call shares.
    Done(Result<R, HandlerError>, Arc<Tally>),
    /// It never reached the handler.
    Unhandled(Unhandled),
}

/// Why a request of a batch was not handled.
#[derive(Debug)]
pub(super) enum Unhandled {
    /// Its deadline passed while the batch filled.
    Expired,
    /// The inbox answered it before: the stored reply.
    Answered(Stored),
    /// The inbox answered another request under its message id.
    Reused,
}

/// What the circuit breaker has heard of one call: a call counts once as passed and once as
/// failed at most, however many of its requests end their rounds with it. And whether its
/// requests are retried one per call: a panic or a timeout of the whole call may be one
/// request's doing, and alone the others pass.
#[derive(Debug, Default)]
pub(super) struct Tally {
    passed: AtomicBool,
    failed: AtomicBool,
    alone: AtomicBool,
}

impl Tally {
    /// Whether the call's requests are to be retried one per call.
    pub(super) fn alone(&self) -> bool {
        self.alone.load(Ordering::Relaxed)
    }

    /// Whether `call` is news for the breaker (the first request of the call to report it).
    pub(super) fn first(&self, call: Call) -> bool {
        let seen = match call {
            Call::Passed => &self.passed,
            Call::Failed => &self.failed,
        };
        !seen.swap(true, Ordering::Relaxed)
    }
}

impl<H: Handler> std::fmt::Debug for Batches<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batches").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl<H: Handler> Batches<H> {
    pub(super) fn new(settings: BatchSettings) -> Self {
        let forming = Forming { entries: Vec::with_capacity(settings.size), taken: 0, due: Instant::now() };
        Self { settings, forming: Mutex::new(forming) }
    }

    /// Add `entry` to the forming batch: the whole batch when it filled it, else which
    /// batch it is in and when that is due.
    fn join(&self, entry: Entry<H>) -> Result<Vec<Entry<H>>, (u64, Instant)> {
        let mut forming = self.forming.lock().unwrap_or_else(|p| p.into_inner());
        if forming.entries.is_empty() {
            forming.due = Instant::now() + self.settings.wait;
        }
        forming.entries.push(entry);
        if forming.entries.len() >= self.settings.size {
            return Ok(forming.take(self.settings.size));
        }
        Err((forming.taken, forming.due))
    }

    /// Batch `batch`, unless it was taken already (filled, or run by another request).
    fn take(&self, batch: u64) -> Vec<Entry<H>> {
        let mut forming = self.forming.lock().unwrap_or_else(|p| p.into_inner());
        if forming.taken == batch && !forming.entries.is_empty() {
            forming.take(self.settings.size)
        } else {
            Vec::new()
        }
    }
}

impl<H: Handler> Forming<H> {
    fn take(&mut self, size: usize) -> Vec<Entry<H>> {
        self.taken = self.taken.wrapping_add(1);
        std::mem::replace(&mut self.entries, Vec::with_capacity(size))
    }
}

impl<H: Handler, T: Transport> Pipeline<H, T> {
    /// Handle `request` in a batch: join the forming one, run it when it is full or due,
    /// and wait for this request's answer; `alone`: in a batch of its own, at once.
    pub(super) async fn in_batch(
        &self,
        batches: &Batches<H>,
        request: &H::Request,
        context: &Context,
        claim: Option<Claimable>,
        alone: bool,
    ) -> Answer<H::Reply> {
        let (answer, mut answered) = oneshot::channel();
        let span = tracing::Span::current();
        let entry = Entry { request: request.clone(), context: context.clone(), claim, span, answer };
        if alone {
            self.run_batch(vec![entry]).await;
            return answered.await.unwrap_or_else(|_| cut_short());
        }
        match batches.join(entry) {
            Ok(full) => self.run_batch(full).await,
            Err((batch, due)) => {
                tokio::select! {
                    biased;
                    answer = &mut answered => return answer.unwrap_or_else(|_| cut_short()),
                    () = tokio::time::sleep_until(due) => {}
                }
                let entries = batches.take(batch);
                if !entries.is_empty() {
                    self.run_batch(entries).await;
                }
            }
        }
        answered.await.unwrap_or_else(|_| cut_short())
    }

    /// Run one batch: expired requests out, the inbox's claim, the handler's call, the
    /// inbox's commit; then answer each request.
    async fn run_batch(&self, entries: Vec<Entry<H>>) {
        let now = SystemTime::now();
        let (live, expired): (Vec<_>, Vec<_>) =
            entries.into_iter().partition(|entry| entry.context.deadline.is_none_or(|deadline| deadline > now));
        for entry in expired {
            let _ = entry.answer.send(Answer::Unhandled(Unhandled::Expired));
        }
        if live.is_empty() {
            return;
        }
        let span = info_span!("batch", size = live.len());
        for entry in &live {
            span.follows_from(entry.span.id());
        }
        self.claimed_call(live).instrument(span).await;
    }

    /// The batch's call, within the inbox's transaction when there is an inbox.
    async fn claimed_call(&self, mut live: Vec<Entry<H>>) {
        let tally = Arc::new(Tally::default());
        let Some(inbox) = &self.inbox else {
            let (results, alone) = self.call_batch(&live, None).await;
            tally.alone.store(alone, Ordering::Relaxed);
            return answer(live, results, &tally);
        };
        let keys: Vec<(&str, &[u8])> = live
            .iter()
            .map(|entry| entry.claim.as_ref().map_or(("", &[][..]), |c| (c.message_id.as_str(), &c.payload[..])))
            .collect();
        let (transaction, claims) = match inbox.claim_batch(&keys).await {
            Ok(claimed) => claimed,
            Err(error) => {
                let errors = live_errors(&live, &inbox_error(error));
                return answer(live, errors, &tally);
            }
        };
        // Answered before, reused, or a second copy of one in this batch: not handled.
        let mut handled = Vec::with_capacity(live.len());
        for (entry, claim) in live.drain(..).zip(claims) {
            let outcome = match claim {
                BatchClaim::Mine | BatchClaim::Unkeyed => {
                    handled.push(entry);
                    continue;
                }
                BatchClaim::Answered(stored) => {
                    self.outputs.metrics.answered_from_inbox();
                    Answer::Unhandled(Unhandled::Answered(stored))
                }
                BatchClaim::Reused => Answer::Unhandled(Unhandled::Reused),
                // Its twin's outcome is its answer once committed: it is asked again.
                BatchClaim::Twin => Answer::Done(Err(twin()), Arc::clone(&tally)),
            };
            let _ = entry.answer.send(outcome);
        }
        if handled.is_empty() {
            transaction.rollback().await;
            return;
        }
        let (mut results, alone) = self.call_batch(&handled, Some(&transaction)).await;
        tally.alone.store(alone, Ordering::Relaxed);
        let outcome = Outcome::of(&handled, &results);
        if let Err(error) = commit(&transaction, outcome).await {
            transaction.rollback().await;
            results = live_errors(&handled, &inbox_error(error));
        }
        answer(handled, results, &tally);
    }

    /// The handler's call under `--handler-timeout`, panics caught: one result per entry,
    /// and whether they are to be retried one per call (a batch's panic or timeout).
    async fn call_batch(
        &self,
        entries: &[Entry<H>],
        transaction: Option<&Transaction>,
    ) -> (Vec<Result<H::Reply, HandlerError>>, bool) {
        let count = entries.len();
        let batch = entries
            .iter()
            .map(|entry| {
                let context = Context { inbox: transaction.cloned(), ..entry.context.clone() };
                (entry.request.clone(), context)
            })
            .collect();
        self.outputs.metrics.batch(count);
        let limit = self.outputs.settings.handler_timeout;
        let outcome = self.timed(self.handler.handle_batch(batch)).await;
        let (whole, alone) = match outcome {
            Ok(Ok(Ok(results))) if results.len() == count => return (results, false),
            Ok(Ok(Ok(_))) => (wrong_count(count), false),
            Ok(Ok(Err(error))) => (error, false),
            // A request alone that panics the call is what panics it, as a handler's.
            Ok(Err(panic)) if count == 1 => {
                (HandlerError::permanent(code::HANDLER_PANICKED, panic_message(panic.as_ref())), false)
            }
            Ok(Err(panic)) => {
                let why = format!("{}; each request is retried alone", panic_message(panic.as_ref()));
                (HandlerError::transient(code::HANDLER_PANICKED, why), true)
            }
            Err(_) => {
                let why = format!("the batch call took longer than {limit:?}");
                (HandlerError::transient(code::TIMEOUT, why), count > 1)
            }
        };
        ((0..count).map(|_| Err(whole.clone())).collect(), alone)
    }
}

/// Store the replies of the requests that passed and release the claims of those that
/// failed (their retries claim anew), and commit; all in one round trip. Nothing passed:
/// roll back (the handler's writes too).
async fn commit(transaction: &Transaction, outcome: Outcome) -> Result<(), InboxError> {
    let Outcome { stored, released, passed } = outcome;
    if !passed {
        transaction.rollback().await;
        return Ok(());
    }
    transaction.commit_batch(&stored, &released).await
}

/// What a batch's commit stores and releases.
struct Outcome {
    /// The encoded replies of the claimed requests that passed, by message id.
    stored: Vec<(String, Stored)>,
    /// The message ids of the claimed requests that failed.
    released: Vec<String>,
    /// Whether any request passed.
    passed: bool,
}

impl Outcome {
    fn of<H: Handler>(entries: &[Entry<H>], results: &[Result<H::Reply, HandlerError>]) -> Self {
        let (mut stored, mut released) = (Vec::new(), Vec::new());
        for (entry, result) in entries.iter().zip(results) {
            let Some(claim) = &entry.claim else { continue };
            // A reply that does not serialize is dead-lettered after the call: not stored.
            match result.as_ref().map(|reply| records::encode::<H>(reply, claim.codec)) {
                Ok(Ok(payload)) => stored.push((
                    claim.message_id.clone(),
                    Stored { content_type: claim.codec.content_type().to_owned(), payload },
                )),
                _ => released.push(claim.message_id.clone()),
            }
        }
        Self { stored, released, passed: results.iter().any(Result::is_ok) }
    }
}

/// Send each entry its result.
fn answer<H: Handler>(entries: Vec<Entry<H>>, results: Vec<Result<H::Reply, HandlerError>>, tally: &Arc<Tally>) {
    for (entry, result) in entries.into_iter().zip(results) {
        let _ = entry.answer.send(Answer::Done(result, Arc::clone(tally)));
    }
}

/// The same failure for each entry.
fn live_errors<H: Handler>(entries: &[Entry<H>], error: &HandlerError) -> Vec<Result<H::Reply, HandlerError>> {
    entries.iter().map(|_| Err(error.clone())).collect()
}

/// The inbox failed for the batch: the `inbox` dependency's transient failure, or, when
/// the database refused what a request carries, a permanent one.
fn inbox_error(error: InboxError) -> HandlerError {
    if error.is_refusal() {
        HandlerError::permanent(code::INBOX_REFUSED, error)
    } else {
        HandlerError::transient(code::INBOX_UNAVAILABLE, error).dependency(INBOX)
    }
}

/// A second copy of a request in one batch (the same message id): retried, and then
/// answered from the inbox once the first copy's reply is committed.
fn twin() -> HandlerError {
    HandlerError::transient(code::INBOX_UNAVAILABLE, "another copy of this request is in the same batch")
}

/// The request whose task ran the batch was cancelled (the worker's grace ran out).
fn cut_short<R>() -> Answer<R> {
    let error = HandlerError::transient(code::TIMEOUT, "the batch this request was in was cut short");
    Answer::Done(Err(error), Arc::new(Tally::default()))
}

#[cfg(test)]
mod tests {
    use std::{sync::atomic::Ordering, time::Duration};

    use crate::{
        breaker::{Policy, Say},
        config::{BatchSettings, Settings},
        contract::{failure::code, headers as h, timestamp},
        pipeline::fixture::{Fixture, header, request, settings},
        retry::RetryPolicy,
    };

    fn batches_of(size: usize, wait_ms: u64) -> Settings {
        Settings { batch: Some(BatchSettings { size, wait: Duration::from_millis(wait_ms) }), ..settings() }
    }

    fn codes(messages: &[crate::transport::Message]) -> Vec<&str> {
        let mut codes: Vec<&str> = messages.iter().filter_map(|m| header(m, h::FAILURE_CODE)).collect();
        codes.sort_unstable();
        codes
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_is_one_call_and_each_request_takes_its_own_path() {
        let mut worker = Fixture::new(batches_of(4, 50)).await;
        let ops = ["ok", "permanent", "transient", "ok"];
        worker.deliver_together(ops.into_iter().map(request).collect()).await;
        // The transient one alone is retried in-process: twice, each in a batch of its own.
        assert_eq!(worker.handler.batches(), [4, 1, 1]);
        let replies = worker.take(&worker.topology.replies);
        let statuses = replies.iter().filter(|reply| header(reply, h::STATUS) == Some("ok")).count();
        assert_eq!((replies.len(), statuses), (3, 2), "two replies and the permanent one's error reply");
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_CODE), Some("bad_name"));
        let retried = worker.take_one(&worker.topology.retry_tiers[0].name);
        assert_eq!(header(&retried, h::FAILURE_CODE), Some("db_down"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_that_does_not_fill_runs_after_the_wait() {
        let mut worker = Fixture::new(batches_of(8, 50)).await;
        let started = tokio::time::Instant::now();
        worker.deliver_together(["ok", "ok", "ok"].into_iter().map(request).collect()).await;
        assert_eq!(started.elapsed(), Duration::from_millis(50));
        assert_eq!(worker.handler.batches(), [3]);
        assert_eq!(worker.take(&worker.topology.replies).len(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_call_fails_each_request_and_counts_once_for_the_breaker() {
        // Two failed rounds in a row open the breaker; no in-process retry.
        let breaker = Policy::new(2, 1.0, 0, Duration::from_secs(30), Duration::from_secs(60), 1).expect("valid");
        let retry = RetryPolicy::new(
            1,
            Duration::from_millis(10),
            Duration::from_millis(10),
            false,
            vec![Duration::from_secs(1)],
        )
        .expect("valid");
        let mut worker = Fixture::new(Settings { breaker: Some(breaker), retry, ..batches_of(3, 50) }).await;
        worker.handler.failing_batches.store(1, Ordering::SeqCst);
        worker.deliver_together(["ok", "ok", "ok"].into_iter().map(request).collect()).await;
        assert_eq!(worker.handler.batches(), [3]);
        let retried = worker.take(&worker.topology.retry_tiers[0].name);
        assert_eq!(codes(&retried), ["db_down"; 3], "each request to the retry tier");
        assert!(matches!(worker.gate.say(), Say::Closed), "one failed call, not three");
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_whose_deadline_passes_while_its_batch_fills_is_not_handled() {
        let mut worker = Fixture::new(batches_of(4, 1_000)).await;
        let mut message = request("ok");
        let deadline = std::time::SystemTime::now() + Duration::from_millis(50);
        message.headers.insert(h::DEADLINE.into(), timestamp::format(deadline));
        // The wall clock passes the deadline while the batch waits (paused time does not move it).
        let wall_clock = async { std::thread::sleep(Duration::from_millis(100)) };
        tokio::join!(worker.deliver_together(vec![message]), wall_clock);
        assert!(worker.handler.batches().is_empty(), "never handed to the handler");
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_CODE), Some(code::DEADLINE_EXCEEDED));
        assert!(header(&dead, h::FAILURE_MESSAGE).is_some_and(|m| m.contains("batch filled")));
    }

    #[tokio::test(start_paused = true)]
    async fn after_a_batch_call_panics_each_request_is_retried_alone() {
        let mut worker = Fixture::new(batches_of(3, 50)).await;
        worker.deliver_together(vec![request("ok"), request("explode"), request("ok")]).await;
        assert_eq!(worker.handler.batches(), [3, 1, 1, 1], "one batch, then each request alone");
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::CORRELATION_ID), Some("c-explode"));
        assert_eq!(header(&dead, h::FAILURE_CODE), Some(code::HANDLER_PANICKED));
        let replies = worker.take(&worker.topology.replies);
        assert_eq!(replies.iter().filter(|reply| header(reply, h::STATUS) == Some("ok")).count(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_panic_fails_only_its_request_and_a_miscounted_batch_fails_each() {
        let mut worker = Fixture::new(batches_of(2, 50)).await;
        worker.deliver_together(vec![request("ok"), request("panic")]).await;
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_CODE), Some(code::HANDLER_PANICKED));
        worker.take(&worker.topology.replies);
        worker.deliver_together(vec![request("ok"), request("short")]).await;
        let dead = worker.take(&worker.topology.dead_letter);
        assert_eq!(codes(&dead), [code::BATCH_RESULTS_MISMATCH; 2]);
    }
}
