//! The handler's rounds: each call under `--handler-timeout` with panics caught, transient
//! failures retried in-process with backoff, the round's outcome fed to the circuit
//! breaker; with `--retry-in-place`, a transient round waits out its retry tier's delay
//! here and runs again.
//!
//! The breaker is asked before every call: open, the delivery goes back to the broker
//! unhandled, without spending a round. A half-open breaker's probe runs its round to the
//! end (`breaker/`).

use std::{panic::AssertUnwindSafe, sync::Arc, time::SystemTime};

use futures::FutureExt;
use tracing::{debug, info};

use super::{
    INBOX, Pipeline,
    batch::{Answer, Claimable, Tally, Unhandled},
    in_flight::InFlight,
};
use crate::{
    breaker::Call,
    contract::failure::{FailureKind, code},
    handler::{Context, Handler, HandlerError, panic_message},
    inbox::{InboxError, Transaction},
    transport::{Source, Transport},
};

/// How the handler's rounds ended.
#[derive(Debug)]
pub(super) enum Rounds<R> {
    /// The last round's result.
    Ended(Result<R, HandlerError>),
    /// The circuit breaker is open: back to the broker, unhandled.
    GiveBack,
    /// The request's deadline passed while it waited to be retried in place.
    Expired,
    /// Its batch settled it without the handler.
    Unhandled(Unhandled),
}

/// How one round ended.
enum Round<R> {
    /// The last call's result, and the handler invocations of the round.
    Ended(Result<R, HandlerError>, u32),
    /// The circuit breaker is open (before a call, or after the round failed).
    GiveBack,
    /// Its batch settled it without the handler.
    Unhandled(Unhandled),
}

/// How a round's calls are made.
struct Mode<'a> {
    /// The half-open breaker's probe: the round runs to its end.
    probe: bool,
    /// In batches: each call a batch of its own (set once a call panicked or timed out).
    alone: &'a mut bool,
}

/// How one call ended.
enum Called<R> {
    /// The handler's result; in a batch, with the tally its call's requests share.
    Result(Result<R, HandlerError>, Option<Arc<Tally>>),
    /// The request's transaction is gone (a call cut short or timed out).
    Lost(InboxError),
    /// Its batch settled it without the handler.
    Unhandled(Unhandled),
}

impl<H: Handler, T: Transport> Pipeline<H, T> {
    /// Run the handler's rounds for `request`: one, or with `--retry-in-place` one more per
    /// retry tier while they fail transiently. With an inbox, the calls run in the
    /// request's `transaction`; in batches, in their batch's (`claim`: what it claims).
    pub(super) async fn rounds(
        &self,
        request: &H::Request,
        delivery: &mut InFlight<'_, T>,
        transaction: Option<&Transaction>,
        claim: Option<&Claimable>,
    ) -> Rounds<H::Reply> {
        let settings = &self.outputs.settings;
        let mut probe = delivery.held.slot.is_probe();
        // In batches: once a call of this request's panicked or timed out, its calls are
        // batches of its own.
        let mut alone = false;
        loop {
            let (result, invocations) = match self
                .round(request, &delivery.meta, &delivery.source, Mode { probe, alone: &mut alone }, transaction, claim)
                .await
            {
                Round::Ended(result, invocations) => (result, invocations),
                Round::GiveBack => return Rounds::GiveBack,
                Round::Unhandled(unhandled) => return Rounds::Unhandled(unhandled),
            };
            delivery.invocations = invocations;
            let tier = match &result {
                Err(error) if error.is_transient() && settings.retry_in_place => {
                    self.outputs.topology.retry_tiers.get(delivery.meta.attempt as usize - 1)
                }
                _ => None,
            };
            let (Some(tier), Err(error)) = (tier, &result) else {
                return Rounds::Ended(result);
            };
            info!(delay = ?tier.delay, code = %error.code, "Transient failure; retrying in place after a delay.");
            self.outputs.metrics.failed(FailureKind::Transient.as_str());
            self.outputs.metrics.retried(&tier.name);
            Box::pin(delivery.wait_in_place(tier.delay)).await;
            // Only a probe's first round is the probe.
            probe = false;
            // As a copy coming back from a retry tier would be.
            if delivery.meta.deadline.is_some_and(|deadline| deadline <= SystemTime::now()) {
                return Rounds::Expired;
            }
        }
    }

    /// One round: call the handler under its timeout, retrying transient errors
    /// in-process with exponential backoff. Returns the last result and the number of
    /// invocations, or `GiveBack` when the circuit breaker is open before a call or after
    /// the round failed (a probe's round runs to its end). The round's outcome feeds the
    /// breaker (a batch's call once, whatever the number of its requests).
    async fn round(
        &self,
        request: &H::Request,
        meta: &crate::contract::headers::RequestMeta,
        source: &Source,
        Mode { probe, alone }: Mode<'_>,
        transaction: Option<&Transaction>,
        claim: Option<&Claimable>,
    ) -> Round<H::Reply> {
        let give_back = || !probe && self.gate.is_open();
        // The backoff is built at the first transient failure: most rounds have none.
        let (retry, mut backoff) = (&self.outputs.settings.retry, None);
        let mut context = Context {
            correlation_id: meta.correlation_id.clone(),
            attempt: meta.attempt,
            invocation: meta.earlier_attempts,
            deadline: meta.deadline,
            source: source.clone(),
            inbox: transaction.cloned(),
        };
        let mut invocations = 0;
        let ended = |result, invocations| if give_back() { Round::GiveBack } else { Round::Ended(result, invocations) };
        loop {
            if give_back() {
                return Round::GiveBack;
            }
            invocations += 1;
            context.invocation = context.invocation.saturating_add(1);
            let (result, tally) = match self.call(request, &context, claim, *alone).await {
                Called::Result(result, tally) => (result, tally),
                // The request's transaction is gone (a call cut short or timed out): no
                // in-process round can use it; the next delivery claims anew.
                Called::Lost(lost) => {
                    self.gate.record(Call::Failed, Some(INBOX));
                    let error = HandlerError::transient(code::INBOX_UNAVAILABLE, lost).dependency(INBOX);
                    return ended(Err(error), invocations);
                }
                Called::Unhandled(unhandled) => return Round::Unhandled(unhandled),
            };
            let news = |call| tally.as_ref().is_none_or(|tally| tally.first(call));
            *alone |= tally.as_ref().is_some_and(|tally| tally.alone());
            match result {
                Err(error) if error.is_transient() => match backoff.get_or_insert_with(|| retry.backoff()).next() {
                    Some(delay) => {
                        debug!(%error, ?delay, invocations, "Transient failure; retrying in-process.");
                        tokio::time::sleep(delay).await;
                    }
                    None => {
                        if news(Call::Failed) {
                            self.gate.record(Call::Failed, error.dependency.as_deref());
                        }
                        return ended(Err(error), invocations);
                    }
                },
                other => {
                    if other.is_ok() && news(Call::Passed) {
                        self.gate.record(Call::Passed, None);
                    }
                    return Round::Ended(other, invocations);
                }
            }
        }
    }

    /// One handler call: in a batch ([`Self::in_batch`]; `alone`: of its own), or on its own under its timeout,
    /// panics caught; with an inbox, what a failed call wrote is rolled back (to the
    /// savepoint set after the claim), and `Lost` when that is impossible: the request's
    /// transaction is over.
    async fn call(
        &self,
        request: &H::Request,
        context: &Context,
        claim: Option<&Claimable>,
        alone: bool,
    ) -> Called<H::Reply> {
        if let Some(batches) = &self.batches {
            // Boxed: off the common path, and the largest of the steps.
            return match Box::pin(self.in_batch(batches, request, context, claim.cloned(), alone)).await {
                Answer::Done(result, tally) => Called::Result(result, Some(tally)),
                Answer::Unhandled(unhandled) => Called::Unhandled(unhandled),
            };
        }
        let limit = self.outputs.settings.handler_timeout;
        let outcome = self.timed(self.handler.handle(request.clone(), context)).await;
        let result = match outcome {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => Err(HandlerError::permanent(code::HANDLER_PANICKED, panic_message(panic.as_ref()))),
            Err(_) => Err(HandlerError::transient(code::TIMEOUT, format!("the handler took longer than {limit:?}"))),
        };
        if let (Err(_), Some(transaction)) = (&result, &context.inbox)
            && let Err(lost) = transaction.undo_call().await
        {
            return Called::Lost(lost);
        }
        Called::Result(result, None)
    }

    /// A handler call under `--handler-timeout`, its panic caught and its duration counted
    /// (one clock read serves the deadline and the duration).
    pub(super) async fn timed<F: Future>(
        &self,
        call: F,
    ) -> Result<std::thread::Result<F::Output>, tokio::time::error::Elapsed> {
        let started = tokio::time::Instant::now();
        let deadline = started + self.outputs.settings.handler_timeout;
        let outcome = tokio::time::timeout_at(deadline, AssertUnwindSafe(call).catch_unwind()).await;
        self.outputs.metrics.handler_took(started.elapsed());
        outcome
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{
        breaker::{Policy, Say},
        contract::{failure::code, headers as h},
        handler::HandlerError,
        pipeline::fixture::{Fixture, header, request, settings},
    };

    #[tokio::test(start_paused = true)]
    async fn transient_failures_are_retried_in_process_before_a_reply() {
        let mut worker = Fixture::new(settings()).await;
        worker
            .handler
            .then([Err(HandlerError::transient("flaky", "once")), Err(HandlerError::transient("flaky", "twice"))]);
        worker.deliver(request("script")).await;
        assert_eq!(worker.handler.calls(), 3);
        assert_eq!(header(&worker.take_one(&worker.topology.replies), h::STATUS), Some("ok"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_handler_times_out_as_transient_and_a_panic_is_permanent() {
        let mut worker = Fixture::new(settings()).await;
        worker.deliver(request("slow")).await;
        let tier = worker.take_one(&worker.topology.retry_tiers[0].name);
        assert_eq!(header(&tier, h::FAILURE_CODE), Some(code::TIMEOUT));
        worker.deliver(request("panic")).await;
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_CODE), Some(code::HANDLER_PANICKED));
        assert_eq!(header(&dead, h::FAILURE_ATTEMPTS), Some("1"), "a permanent failure is not retried");
    }

    #[tokio::test(start_paused = true)]
    async fn retries_in_place_wait_here_and_count_the_rounds() {
        let mut worker = Fixture::new(crate::config::Settings { retry_in_place: true, ..settings() }).await;
        let transient = || Err(HandlerError::transient("flaky", "down"));
        worker.handler.then([transient(), transient(), transient()]);
        let started = tokio::time::Instant::now();
        worker.deliver(request("script")).await;
        assert!(started.elapsed() >= Duration::from_secs(1), "the first tier's delay, waited here");
        assert_eq!(*worker.handler.attempts.lock().expect("not poisoned"), [1, 1, 1, 2]);
        assert!(worker.topology.retry_tiers.iter().all(|tier| worker.broker.peek(&tier.name).is_empty()));
        assert_eq!(header(&worker.take_one(&worker.topology.replies), h::STATUS), Some("ok"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_outlives_its_deadline_in_place_is_expired() {
        let mut worker = Fixture::new(crate::config::Settings { retry_in_place: true, ..settings() }).await;
        // Three calls of 400 ms of the wall clock pass the deadline within the first round.
        let deadline = std::time::SystemTime::now() + Duration::from_secs(1);
        let mut message = request("stall");
        message.headers.insert(h::DEADLINE.into(), crate::contract::timestamp::format(deadline));
        worker.deliver(message).await;
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_CODE), Some(code::DEADLINE_EXCEEDED));
        assert!(header(&dead, h::FAILURE_MESSAGE).is_some_and(|m| m.contains("waited to be retried")));
        assert_eq!(worker.handler.calls(), 3, "no round after the deadline");
    }

    /// The consume loop copies each delivery's future into fresh memory, so the steps off
    /// the common path are boxed where it branches to them (a batch's step nested in
    /// every call makes this future 8 KiB in a test build; 2.9 KiB boxed).
    #[tokio::test(start_paused = true)]
    async fn a_delivery_future_holds_the_common_path_only() {
        let mut worker = Fixture::new(settings()).await;
        let size = worker.deliver_measured(request("ok")).await;
        assert!(size <= 4096, "the delivery's future is {size} bytes: box the step that grew it");
        assert_eq!(header(&worker.take_one(&worker.topology.replies), h::STATUS), Some("ok"));
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_breaker_gives_the_delivery_back_unhandled() {
        let policy = Policy::new(1, 1.0, 0, Duration::from_secs(30), Duration::from_secs(60), 1).expect("valid");
        let mut worker = Fixture::new(crate::config::Settings { breaker: Some(policy), ..settings() }).await;
        worker.deliver(request("transient")).await;
        assert!(matches!(worker.gate.say(), Say::Open { .. }), "one failed round opens it");
        let calls = worker.handler.calls();
        worker.deliver(request("ok")).await;
        assert_eq!(worker.handler.calls(), calls, "not handled while open");
        // The round that opened it gave its request back too, not to a retry tier.
        assert_eq!(worker.broker.peek(&worker.topology.queue).len(), 2, "both given back to the broker");
        assert!(worker.topology.retry_tiers.iter().all(|tier| worker.broker.peek(&tier.name).is_empty()));
    }
}
