//! A delivery's outputs, each confirmed by the broker before the delivery is acked, and
//! each with its fallback when the broker refuses it for good:
//!
//! ```text
//! reply ─────────── refused for good ──→ dead-letter copy (unroutable / too large)
//! retry tier ────── refused for good ──→ dead-letter copy
//! dead-letter copy ─ too large ────────→ the same without its payload
//!                  ─ refused for good ──→ parking queue
//! ```
//!
//! Once a dead-letter (or parked) copy is confirmed, the requester gets an error reply,
//! best effort. An output not confirmed at all (the broker down, or refusing for now) is
//! [`Settle::Requeue`]: `settle.rs` decides what happens to the delivery.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tracing::{debug, info, warn};

use super::{
    failure::Failure,
    in_flight::{Held, InFlight},
    records::{self, Failed},
    settle::{Output, Settle, Unsettled},
};
use crate::{
    config::Settings,
    contract::{
        failure::{FailureKind, code},
        headers as h,
    },
    observe::Metrics,
    redelivery,
    transport::{Acker, Message, PublishError, Topology, Transport},
};

/// What a delivery's outputs need: the broker, the worker's settings and queues, its
/// metrics, and the refusal counts of messages whose outputs the broker refused.
#[derive(Debug)]
pub(crate) struct Outputs<T> {
    /// Where outputs are published.
    pub(super) transport: T,
    /// Limits, retry policy, reply allowlist, names.
    pub(super) settings: Settings,
    /// Names of the retry tiers, the dead-letter and the parking queue.
    pub(super) topology: Topology,
    /// Counters and timings.
    pub(super) metrics: Metrics,
    /// Refusals per message, so an output refused for good cannot loop forever.
    pub(super) redeliveries: redelivery::Shared,
}

impl<T: Transport> Outputs<T> {
    pub(super) fn new(transport: T, settings: Settings, metrics: Metrics) -> Self {
        let topology = settings.topology();
        let redeliveries = redelivery::Shared::new(settings.max_redeliveries);
        Self { transport, settings, topology, metrics, redeliveries }
    }

    /// Publish and wait for the confirm, trying again a few times while the broker is
    /// briefly unavailable or refuses; a refusal for good is reported at once. Once the
    /// broker client has the message, the delivery's ordering lane and handler slot are
    /// released.
    async fn publish(
        &self,
        held: &mut Held<T::Acker>,
        destination: &str,
        message: Message,
    ) -> Result<(), PublishError> {
        const PUBLISH_BACKOFF: [Duration; 3] =
            [Duration::from_millis(50), Duration::from_millis(200), Duration::from_millis(800)];
        held.slot.charge(message.byte_len());
        let mut result = self.send(held, destination, &message).await;
        for delay in PUBLISH_BACKOFF {
            match &result {
                Err(error) if error.is_transient() => {
                    debug!(%error, destination, ?delay, "Publish not confirmed; trying again.");
                    tokio::time::sleep(delay).await;
                    result = self.send(held, destination, &message).await;
                }
                _ => break,
            }
        }
        result
    }

    /// One attempt of [`Self::publish`].
    async fn send(&self, held: &mut Held<T::Acker>, destination: &str, message: &Message) -> Result<(), PublishError> {
        let confirm = self.transport.send(destination, message).await?;
        held.acker.release();
        held.slot.handed_off().await;
        confirm.await
    }

    /// Publish a dead-letter (or parked) copy to `destination`; one too large for the
    /// broker goes again without its payload. Returns the copy last sent.
    async fn publish_copy(
        &self,
        held: &mut Held<T::Acker>,
        destination: &str,
        copy: Message,
    ) -> (Message, Result<(), PublishError>) {
        let result = self.publish(held, destination, copy.clone()).await;
        if !matches!(result, Err(PublishError::TooLarge { .. })) {
            return (copy, result);
        }
        let payload_bytes = copy.payload.len();
        let copy = records::without_payload(copy, payload_bytes);
        let result = self.publish(held, destination, copy.clone()).await;
        (copy, result)
    }

    /// Count and log a confirmed dead-letter (or parked) copy.
    fn dead_lettered(&self, failure: &Failure, copy: &Message) {
        let fingerprint = copy.headers.get(h::FAILURE_FINGERPRINT).map_or("", String::as_str);
        self.metrics.failed(failure.kind.as_str());
        self.metrics.dead_lettered(failure.kind.as_str(), fingerprint);
        info!(kind = %failure.kind, code = %failure.code, message = %failure.message, "Dead-lettered.");
    }
}

impl<T: Transport> InFlight<'_, T> {
    /// Reply `payload` (in the request's codec); a reply the broker refuses for good is
    /// dead-lettered instead.
    pub(super) async fn reply(&mut self, payload: Bytes) -> Settle {
        let outputs = self.outputs;
        let reply_to = records::reply_to(&self.meta, &outputs.settings);
        let reply = records::reply(self.message(), &self.meta, &outputs.settings.instance, payload);
        let error = match outputs.publish(&mut self.held, reply_to, reply).await {
            Ok(()) => {
                debug!(reply_to, "Replied.");
                outputs.metrics.succeeded();
                return Settle::Ack;
            }
            Err(error) if error.is_transient() => return Settle::Requeue(Unsettled { output: Output::Reply, error }),
            Err(error) => error,
        };
        let failure = match &error {
            PublishError::TooLarge { .. } => {
                Failure::new(FailureKind::Permanent, code::REPLY_TOO_LARGE, error.to_string())
            }
            PublishError::InvalidName { .. } => {
                Failure::new(FailureKind::Unroutable, code::REPLY_TO_INVALID, error.to_string())
            }
            _ => Failure::new(
                FailureKind::Unroutable,
                code::REPLY_UNROUTABLE,
                format!("no queue or topic named {reply_to:?}"),
            ),
        };
        Box::pin(self.dead_letter(failure)).await
    }

    /// Hand the message to the next delayed-retry tier, or dead-letter it when none is left
    /// (or the tier refuses it for good).
    pub(super) async fn retry_later(&mut self, failure: Failure) -> Settle {
        let outputs = self.outputs;
        let Some(tier) = outputs.topology.retry_tiers.get(self.meta.attempt as usize - 1) else {
            return self.dead_letter(failure).await;
        };
        let copy = records::retry_copy(self.message(), &self.failed(&failure), &outputs.settings);
        match outputs.publish(&mut self.held, &tier.name, copy).await {
            Ok(()) => {
                info!(tier = %tier.name, delay = ?tier.delay, code = %failure.code, "Transient failure; retrying after a delay.");
                outputs.metrics.failed(failure.kind.as_str());
                outputs.metrics.retried(&tier.name);
                Settle::Ack
            }
            Err(error) if error.is_transient() => Settle::Requeue(Unsettled { output: Output::Retry, error }),
            // The tier cannot take it (too large for the broker, say): no round can.
            Err(error) => {
                let failure = failure.and_then(format!("the retry tier refused it: {error}"));
                self.dead_letter(failure).await
            }
        }
    }

    /// Publish the dead-letter copy; once confirmed, tell the requester. A copy too large
    /// for the broker goes without its payload; one the dead-letter queue refuses for good
    /// goes to the parking queue.
    pub(super) async fn dead_letter(&mut self, failure: Failure) -> Settle {
        let outputs = self.outputs;
        let copy = self.dead_letter_copy(&failure);
        let (copy, result) = outputs.publish_copy(&mut self.held, &outputs.topology.dead_letter, copy).await;
        match result {
            Ok(()) => {
                outputs.dead_lettered(&failure, &copy);
                self.error_reply(&failure).await;
                Settle::Ack
            }
            Err(error) if error.is_transient() => Settle::Requeue(Unsettled { output: Output::DeadLetter, error }),
            Err(error) => self.park(&failure, copy, error).await,
        }
    }

    /// The dead-letter queue refused `copy` for good (`refusal`): write it to the parking
    /// queue instead, where `courier dlq` finds it too.
    pub(super) async fn park(&mut self, failure: &Failure, copy: Message, refusal: PublishError) -> Settle {
        let outputs = self.outputs;
        let parking = &outputs.topology.parking;
        let (copy, result) = outputs.publish_copy(&mut self.held, parking, copy).await;
        match result {
            Ok(()) => {
                tracing::error!(%refusal, %parking, "The dead-letter queue refused the copy; parked.");
                outputs.metrics.parked();
                outputs.dead_lettered(failure, &copy);
                self.error_reply(failure).await;
                Settle::Ack
            }
            Err(error) => Settle::Requeue(Unsettled { output: Output::DeadLetter, error }),
        }
    }

    /// The dead-letter copy of this failure, as [`Self::dead_letter`] would send it.
    pub(super) fn dead_letter_copy(&self, failure: &Failure) -> Message {
        records::failure_copy(self.message(), &self.failed(failure), &self.outputs.settings)
    }

    /// Best effort: the dead-letter copy is already safe, so a failed error reply is only
    /// logged.
    async fn error_reply(&mut self, failure: &Failure) {
        let outputs = self.outputs;
        let Some(reply) = records::error_reply(self.message(), &self.meta, &outputs.settings, failure) else {
            return;
        };
        let reply_to = records::reply_to(&self.meta, &outputs.settings);
        if let Err(error) = outputs.publish(&mut self.held, reply_to, reply).await {
            warn!(%error, reply_to, "Error reply not delivered (the dead-letter copy is safe).");
        }
    }

    /// What this delivery's copies say of `failure`.
    fn failed<'a>(&'a self, failure: &'a Failure) -> Failed<'a> {
        Failed {
            failure,
            meta: &self.meta,
            source: &self.source,
            invocations: self.invocations,
            now: SystemTime::now(),
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::{
        contract::{failure::code, headers as h},
        pipeline::fixture::{Fixture, header, request, settings},
        transport::Transport as _,
    };

    #[tokio::test(start_paused = true)]
    async fn an_ok_reply_goes_to_the_reply_queue_and_the_request_is_acked() {
        let mut worker = Fixture::new(settings()).await;
        worker.deliver(request("ok")).await;
        let reply = worker.take_one(&worker.topology.replies);
        assert_eq!(header(&reply, h::STATUS), Some("ok"));
        assert_eq!(header(&reply, h::CORRELATION_ID), Some("c-ok"));
        assert_eq!(&reply.payload[..], br#"{"op":"ok"}"#);
        assert!(worker.take(&worker.topology.queue).is_empty(), "acked, not requeued");
    }

    #[tokio::test(start_paused = true)]
    async fn a_transient_failure_goes_to_the_next_tier_then_the_dead_letter_queue() {
        let mut worker = Fixture::new(settings()).await;
        worker.deliver(request("transient")).await;
        assert_eq!(worker.handler.calls(), 3, "three calls in process");
        let tiers = worker.topology.retry_tiers.clone();
        assert!(worker.broker.peek(&tiers[0].name).len() == 1, "waits in the first tier");
        // Back from the first tier, then the second: no tier is left after it.
        worker.deliver_next().await;
        worker.deliver_next().await;
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_CODE), Some("db_down"));
        assert_eq!(header(&dead, h::ATTEMPT), Some("3"));
        assert_eq!(header(&dead, h::FAILURE_ATTEMPTS), Some("9"), "three calls in each of three rounds");
        let error = worker.take_one(&worker.topology.replies);
        assert_eq!(header(&error, h::STATUS), Some("error"));
        assert_eq!(header(&error, h::ERROR_CODE), Some("db_down"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reply_to_no_queue_is_dead_lettered_without_an_error_reply() {
        let mut settings = settings();
        settings.reply_allow = vec!["nowhere.*".into()];
        let mut worker = Fixture::new(settings).await;
        let mut message = request("ok");
        message.headers.insert(h::REPLY_TO.into(), "nowhere.at-all".into());
        worker.deliver(message).await;
        let dead = worker.take_one(&worker.topology.dead_letter);
        assert_eq!(header(&dead, h::FAILURE_CODE), Some(code::REPLY_UNROUTABLE));
        assert!(worker.take(&worker.topology.replies).is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_copy_the_dead_letter_queue_refuses_for_good_is_parked() {
        let mut worker = Fixture::new(settings()).await;
        worker.broker.delete_queue(&worker.topology.dead_letter);
        worker.deliver(request("permanent")).await;
        let parked = worker.take_one(&worker.topology.parking);
        assert_eq!(header(&parked, h::FAILURE_CODE), Some("bad_name"));
        assert_eq!(header(&worker.take_one(&worker.topology.replies), h::ERROR_CODE), Some("bad_name"));
        assert!(worker.take(&worker.topology.queue).is_empty());
        // The worker's broker stays usable for others.
        assert!(worker.broker.is_ready());
    }
}
