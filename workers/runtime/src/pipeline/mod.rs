//! The delivery pipeline, top to bottom: what happens to one message.
//!
//! ```text
//! admit.rs    size cap → contract headers → deadline → reply target → decode + schema
//! claim.rs    --inbox: answered before → the stored reply; else claim the message id
//! batch.rs    --batch-size: the handler's call gathers requests into a batch (with
//!             --inbox, the batch's claims and commit in one transaction)
//! round.rs    handler under a timeout, in-process retries with backoff (transient errors),
//!             the circuit breaker (open: back to the broker unhandled, no round spent);
//!             --retry-in-place: wait out the tier's delay here and run the next round
//! outputs.rs  ok        → reply ─────────────────── confirmed → ack
//!             transient → the next retry tier ────── confirmed → ack (none left: dead-letter)
//!             otherwise → dead-letter copy ───────── confirmed → ack, then an error reply
//!             refused for good → its fallback: reply/retry → dead-letter copy → the same
//!             without its payload → the parking queue
//! settle.rs   not confirmed (broker down, or refusing) → nack after a pause; after
//!             --max-redeliveries refusals → dead-lettered as `undeliverable`
//! ```
//!
//! One [`InFlight`](in_flight::InFlight) value per delivery carries the message, where it
//! came from, its parsed contract headers and its acker; the steps are its methods and
//! the [`Pipeline`]'s. Nothing is acked before its output is confirmed by the broker, so a
//! crash at any point loses nothing (at-least-once).
//!
//! A delivery's future is allocated per message and copied when it is created, so the
//! steps off the common path (dead letters, retry tiers, the inbox, batches, waits in
//! place, unconfirmed outputs) are boxed where the path branches off to them (`Box::pin`):
//! the future then holds the common path only (admit, the handler round, the reply, the
//! ack; a test in `round.rs` bounds its size).

mod admit;
mod batch;
mod claim;
mod failure;
#[cfg(test)]
mod fixture;
mod in_flight;
mod outputs;
mod records;
mod round;
mod settle;
mod slot;

use std::{ops::ControlFlow, time::SystemTime};

use tracing::{Instrument, info_span};

use self::{
    admit::Rules,
    batch::{Batches, Unhandled},
    failure::Failure,
    in_flight::InFlight,
    outputs::Outputs,
    round::Rounds,
    settle::Settle,
};
pub(crate) use self::{settle::BREAKER_OPEN, slot::Slot};
use crate::{
    breaker::Gate,
    config::Settings,
    contract::{
        failure::{FailureKind, code},
        headers::BadHeader,
        trace,
    },
    handler::Handler,
    inbox::{Inbox, Transaction},
    observe::{Metrics, otlp},
    schema::RequestSchema,
    transport::{Delivery, Transport},
};

/// The circuit breaker's name for the inbox's database.
const INBOX: &str = crate::inbox::DEPENDENCY;

/// Everything needed to process deliveries of one worker; shared by all tasks.
#[derive(Debug)]
pub(crate) struct Pipeline<H: Handler, T> {
    /// The business logic.
    handler: H,
    /// The compiled request schema.
    schema: RequestSchema,
    /// The circuit breakers, fed by each handler round's outcome.
    gate: Gate,
    /// The idempotent inbox (`--inbox`).
    inbox: Option<Inbox>,
    /// The batch forming (`--batch-size`).
    batches: Option<Batches<H>>,
    /// Where outputs go: the transport, settings, names, metrics, refusal counts.
    outputs: Outputs<T>,
}

impl<H: Handler, T: Transport> Pipeline<H, T> {
    pub(crate) fn new(
        handler: H,
        transport: T,
        schema: RequestSchema,
        settings: Settings,
        metrics: Metrics,
        gate: Gate,
        inbox: Option<Inbox>,
    ) -> Self {
        let batches = settings.batch.map(Batches::new);
        Self { handler, schema, gate, inbox, batches, outputs: Outputs::new(transport, settings, metrics) }
    }

    /// Process one delivery and settle it. If its future is dropped (shutdown grace period
    /// over), the unsettled acker is dropped and the broker delivers the message again.
    pub(crate) async fn deliver(&self, delivery: Delivery<T::Acker>, slot: Slot) {
        let metrics = &self.outputs.metrics;
        metrics.received();
        let _in_flight = metrics.in_flight();
        let span = info_span!(
            "delivery",
            source = %delivery.source,
            correlation_id = tracing::field::Empty,
            attempt = tracing::field::Empty,
            trace_id = tracing::field::Empty,
        );
        async {
            let (mut delivery, bad) = InFlight::new(&self.outputs, delivery, slot);
            continue_trace(&mut delivery);
            let given_up = delivery.given_up();
            let settle = match given_up {
                Some(code) => Box::pin(delivery.fallbacks_again(code)).await,
                None => self.process(&mut delivery, bad).await,
            };
            let ack = delivery.ack(settle, given_up.is_some()).await;
            settle::settle(delivery.into_acker(), ack).await;
        }
        .instrument(span)
        .await;
    }

    /// Admit the request, claim it in the inbox, run the handler's rounds, and publish
    /// the outcome.
    async fn process(&self, delivery: &mut InFlight<'_, T>, bad: Option<BadHeader>) -> Settle {
        let transport = &self.outputs.transport;
        let name_problem = |name: &str| transport.name_problem(name);
        let rules = Rules { settings: &self.outputs.settings, schema: &self.schema, name_problem: &name_problem };
        let request = match admit::admit::<H>(&rules, delivery.message(), &delivery.meta, bad, SystemTime::now) {
            Ok(request) => request,
            Err(failure) => return Box::pin(delivery.dead_letter(failure)).await,
        };
        let (transaction, claim) = match &self.inbox {
            // A batch claims its requests together (`batch.rs`).
            Some(_) if self.batches.is_some() => match Box::pin(self.claimable(delivery)).await {
                ControlFlow::Continue(claim) => (None, claim),
                ControlFlow::Break(settle) => return settle,
            },
            Some(inbox) => match Box::pin(self.claim(inbox, delivery)).await {
                ControlFlow::Continue(transaction) => (transaction, None),
                ControlFlow::Break(settle) => return settle,
            },
            None => (None, None),
        };
        let result = match self.rounds(&request, delivery, transaction.as_ref(), claim.as_ref()).await {
            Rounds::Ended(result) => result,
            Rounds::GiveBack => {
                if let Some(transaction) = transaction {
                    Box::pin(transaction.rollback()).await;
                }
                return Settle::GiveBack;
            }
            Rounds::Expired => {
                let why = "the request's deadline passed while it waited to be retried";
                return Box::pin(self.expired(delivery, transaction, why)).await;
            }
            Rounds::Unhandled(Unhandled::Expired) => {
                let why = "the request's deadline passed while its batch filled";
                return Box::pin(self.expired(delivery, None, why)).await;
            }
            Rounds::Unhandled(Unhandled::Answered(stored)) => return Box::pin(self.answered(delivery, stored)).await,
            Rounds::Unhandled(Unhandled::Reused) => return Box::pin(self.reused(delivery)).await,
        };
        let encoded = result.map(|reply| records::encode::<H>(&reply, delivery.meta.codec));
        if let Some(transaction) = transaction {
            let reply = match &encoded {
                Ok(Ok(payload)) => Some(payload.as_slice()),
                _ => None,
            };
            if let ControlFlow::Break(settle) = Box::pin(self.commit(delivery, transaction, reply)).await {
                return settle;
            }
        }
        let failure = match encoded {
            Ok(Ok(payload)) => return delivery.reply(payload.into()).await,
            Ok(Err(error)) => Failure::new(FailureKind::Permanent, code::REPLY_NOT_SERIALIZABLE, error),
            Err(error) if error.is_transient() => {
                return Box::pin(delivery.retry_later(Failure::from_handler(error))).await;
            }
            Err(error) => Failure::from_handler(error),
        };
        Box::pin(delivery.dead_letter(failure)).await
    }

    /// The request's deadline passed while it waited (`why`): to be retried in place, or
    /// for its batch to fill.
    async fn expired(
        &self,
        delivery: &mut InFlight<'_, T>,
        transaction: Option<Transaction>,
        why: &'static str,
    ) -> Settle {
        if let Some(transaction) = transaction {
            transaction.rollback().await;
        }
        delivery.dead_letter(Failure::new(FailureKind::Expired, code::DEADLINE_EXCEEDED, why)).await
    }
}

/// The delivery's span continues the request's trace, and its outputs carry the span as
/// their parent; the span's fields name the request.
fn continue_trace<T: Transport>(delivery: &mut InFlight<'_, T>) {
    let span = tracing::Span::current();
    let traceparent = otlp::continue_trace(&span, &delivery.received().headers, delivery.meta.traceparent.as_deref());
    let meta = &mut delivery.meta;
    meta.traceparent = traceparent;
    span.record("correlation_id", meta.correlation_id.as_str());
    span.record("attempt", meta.attempt);
    if let Some(trace_id) = meta.traceparent.as_deref().and_then(trace::trace_id) {
        span.record("trace_id", trace_id);
    }
}
