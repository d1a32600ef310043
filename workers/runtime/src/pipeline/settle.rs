//! Settling a delivery: ack once its output is confirmed; otherwise back to the broker,
//! after a pause, counting the refusals of its outputs so that one the broker keeps
//! refusing ends as an `undeliverable` dead letter after `--max-redeliveries` rounds
//! (`redelivery.rs`), instead of looping forever.

use tracing::warn;

use super::{failure::Failure, in_flight::InFlight, outputs::Outputs};
use crate::{
    contract::{
        failure::{FailureKind, code},
        headers as h,
    },
    redelivery::{self, Next},
    transport::{Acker, Message, Position, PublishError, Source, Transport},
};

/// The `courier_messages_requeued_total` reason of deliveries given back while the circuit
/// breaker is open.
pub(crate) const BREAKER_OPEN: &str = "breaker_open";

/// How a delivery is settled once processing ends.
#[derive(Debug)]
pub(super) enum Settle {
    /// Its output is confirmed: remove it from the broker.
    Ack,
    /// Not finished: the broker delivers it again.
    Requeue(Unsettled),
    /// Not handled: the circuit breaker is open. Back to the broker at once, without
    /// spending a retry round or counting as a refusal.
    GiveBack,
}

/// Which output was not confirmed, and why.
#[derive(Debug)]
pub(super) struct Unsettled {
    /// The output that failed.
    pub(super) output: Output,
    /// The broker's answer.
    pub(super) error: PublishError,
}

/// A delivery's outputs, for logs and failure codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Output {
    Reply,
    Retry,
    DeadLetter,
}

impl Output {
    /// The failure code of a message dead-lettered because this output kept being refused.
    fn refused_code(self) -> &'static str {
        match self {
            Self::Reply => code::REPLY_REFUSED,
            Self::Retry => code::RETRY_REFUSED,
            Self::DeadLetter => code::DEAD_LETTER_REFUSED,
        }
    }
}

impl<T: Transport> InFlight<'_, T> {
    /// The failure code of a message whose outputs every destination refused on earlier
    /// deliveries: it is not handled again.
    pub(super) fn given_up(&self) -> Option<&'static str> {
        self.outputs.redeliveries.given_up(|| identity(self.received(), &self.source))
    }

    /// Whether to ack, as `settle` says; an output not confirmed first goes through
    /// [`Self::unsettled`]. `given_up`: the delivery went straight to its fallbacks.
    pub(super) async fn ack(&mut self, settle: Settle, given_up: bool) -> bool {
        let outputs = self.outputs;
        match settle {
            Settle::Ack => {
                outputs.redeliveries.settled(|| identity(self.received(), &self.source));
                true
            }
            // Already paused for: straight back to the broker.
            Settle::Requeue(_) if given_up => false,
            Settle::GiveBack => {
                outputs.metrics.requeued(BREAKER_OPEN);
                false
            }
            Settle::Requeue(unsettled) => Box::pin(self.unsettled(unsettled)).await,
        }
    }

    /// An output was not confirmed: requeue after a pause, or, past the message's limit of
    /// refusals, dead-letter it as `undeliverable` (or park it when the dead-letter queue
    /// is what refuses). Returns whether to ack.
    async fn unsettled(&mut self, Unsettled { output, error }: Unsettled) -> bool {
        let outputs = self.outputs;
        // A refusal counts; so does an unavailable destination while the broker is up (a
        // topic whose leader is gone): only an outage of the whole broker does not.
        let next = if error.counts_against_the_message() || outputs.transport.is_ready() {
            outputs.redeliveries.refused(identity(self.received(), &self.source))
        } else {
            Next::Requeue { after: redelivery::OUTAGE_DELAY, round: 0 }
        };
        let rounds = match next {
            Next::Requeue { after, round } => {
                outputs.metrics.requeued(error.reason());
                warn!(%error, ?output, round, ?after, "Output not confirmed; the request goes back to the broker.");
                tokio::time::sleep(after).await;
                return false;
            }
            Next::GiveUp { rounds } => rounds,
        };
        let why = format!("the broker refused the {output:?} {rounds} times; the last time: {error}");
        let failure = Failure::new(FailureKind::Undeliverable, output.refused_code(), why);
        let settle = match output {
            Output::Reply | Output::Retry => self.dead_letter_or_park(failure).await,
            Output::DeadLetter => {
                let copy = self.dead_letter_copy(&failure);
                self.park(&failure, copy, error).await
            }
        };
        if let Settle::Requeue(Unsettled { error, .. }) = settle {
            // Later deliveries go straight to the fallbacks, without the handler.
            outputs.redeliveries.give_up_for_good(identity(self.received(), &self.source), output.refused_code());
            nothing_takes_it(outputs, &error).await;
            return false;
        }
        true
    }

    /// A message given up before whose fallbacks refused it: try them again, without the
    /// handler (its side effects ran often enough). `Settle::Requeue` only when every
    /// destination refuses still; it then waits [`redelivery::MAX_DELAY`] first.
    pub(super) async fn fallbacks_again(&mut self, code: &'static str) -> Settle {
        let why = "the broker refused its output on every round, and the dead-letter and parking queues refused it \
                   too; not handled again";
        let settle = self.dead_letter_or_park(Failure::new(FailureKind::Undeliverable, code, why)).await;
        if let Settle::Requeue(Unsettled { error, .. }) = &settle {
            nothing_takes_it(self.outputs, error).await;
        }
        settle
    }

    /// The dead-letter copy, or, when the dead-letter queue does not take it (even for a
    /// while), the parking queue: a message given up has no rounds left to wait.
    async fn dead_letter_or_park(&mut self, failure: Failure) -> Settle {
        match self.dead_letter(failure.clone()).await {
            // A refusal for good was parked (or tried) by `dead_letter` already.
            Settle::Requeue(Unsettled { error, .. }) if error.is_transient() => {
                let copy = self.dead_letter_copy(&failure);
                self.park(&failure, copy, error).await
            }
            settled => settled,
        }
    }
}

/// Every destination refuses the message: the broker's configuration needs a person.
/// It goes back to the broker after [`redelivery::MAX_DELAY`].
async fn nothing_takes_it<T>(outputs: &Outputs<T>, error: &PublishError) {
    outputs.metrics.requeued(error.reason());
    tracing::error!(%error, "Neither the dead-letter nor the parking queue takes the message; it goes back to the broker.");
    tokio::time::sleep(redelivery::MAX_DELAY).await;
}

/// Ack (`true`) or nack the delivery `acker` settles, once.
pub(super) async fn settle<A: Acker>(acker: A, ack: bool) {
    let result = if ack { acker.ack().await } else { acker.nack().await };
    if let Err(error) = result {
        // The broker will deliver it again; the output may then be duplicated.
        warn!(%error, ack, "Could not settle the delivery.");
    }
}

/// A stable identity of a delivered message, for counting its redeliveries: its Kafka
/// position (with its delivery round: a retry topic's record has the work topic as its
/// source and may share a position with one there), else its message id, else its
/// payload and headers (within the queue it came from).
fn identity(message: &Message, source: &Source) -> u64 {
    use std::hash::{BuildHasher as _, Hash as _, Hasher as _};
    let hasher = foldhash::fast::FixedState::with_seed(0x0063_6f75_7269_6572);
    let round = message.headers.get(h::ATTEMPT);
    match (&source.position, message.headers.get(h::MESSAGE_ID)) {
        (Some(Position { partition, offset, .. }), _) => hasher.hash_one((&*source.queue, partition, offset, round)),
        (_, Some(id)) => hasher.hash_one((&*source.queue, id)),
        _ => {
            let mut state = hasher.build_hasher();
            (&*source.queue, &message.payload[..]).hash(&mut state);
            for (name, value) in &message.headers {
                (name.as_ref(), value).hash(&mut state);
            }
            state.finish()
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        contract::{failure::code, headers as h},
        pipeline::fixture::{Fixture, header, request, settings},
        transport::{Message, Transport as _},
    };

    /// Make `queue` refuse every publish for now: a full queue with room for one.
    async fn refusing(worker: &Fixture, queue: &str) {
        worker.broker.declare_queue(queue, Some(1));
        worker.broker.publish(queue, &Message::default()).await.expect("room for one");
    }

    #[tokio::test(start_paused = true)]
    async fn a_refused_reply_is_redelivered_then_dead_lettered_as_undeliverable() {
        let mut worker = Fixture::new(settings()).await;
        let replies = worker.topology.replies.clone();
        refusing(&worker, &replies).await;
        worker.deliver(request("ok")).await;
        assert_eq!(worker.broker.peek(&worker.topology.queue).len(), 1, "back in the work queue");
        // Two requeues are the limit (`settings()`): the third refusal gives up.
        worker.deliver_next().await;
        worker.deliver_next().await;
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_KIND), Some("undeliverable"));
        assert_eq!(header(&dead, h::FAILURE_CODE), Some(code::REPLY_REFUSED));
        assert_eq!(worker.handler.calls(), 3, "handled on each round");
        assert!(worker.take(&worker.topology.queue).is_empty(), "acked once dead-lettered");
    }

    #[tokio::test(start_paused = true)]
    async fn when_nothing_takes_a_message_it_waits_and_is_not_handled_again() {
        let mut worker = Fixture::new(settings()).await;
        for queue in [&worker.topology.replies, &worker.topology.dead_letter, &worker.topology.parking] {
            refusing(&worker, &queue.clone()).await;
        }
        for _ in 0..3 {
            if worker.broker.peek(&worker.topology.queue).is_empty() {
                worker.deliver(request("ok")).await;
            } else {
                worker.deliver_next().await;
            }
        }
        assert_eq!(worker.handler.calls(), 3);
        let started = tokio::time::Instant::now();
        worker.deliver_next().await;
        assert_eq!(worker.handler.calls(), 3, "given up for good: only its fallbacks are tried");
        assert!(started.elapsed() >= crate::redelivery::MAX_DELAY, "and only after the longest pause");
        // Once the dead-letter queue takes copies again, it gets one.
        worker.broker.purge(&worker.topology.dead_letter);
        worker.deliver_next().await;
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_CODE), Some(code::REPLY_REFUSED));
        assert!(worker.take(&worker.topology.queue).is_empty());
    }
}
