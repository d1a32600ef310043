//! The inbox's part of a delivery (`--inbox`): before the handler's rounds, claim the
//! request's message id: a request answered before is answered again from the inbox,
//! without the handler; a new one runs in the transaction that claims it. After the
//! rounds, the reply commits with the claim, or the transaction rolls back.

use std::ops::ControlFlow;

use tracing::{debug, warn};

use super::{INBOX, Pipeline, batch::Claimable, failure::Failure, in_flight::InFlight, settle::Settle};
use crate::{
    breaker::Call,
    contract::{
        codec::Codec,
        failure::{FailureKind, code},
    },
    handler::{Handler, HandlerError},
    inbox::{self, Claim, Inbox, InboxError, Stored, Transaction},
    transport::Transport,
};

impl<H: Handler, T: Transport> Pipeline<H, T> {
    /// The request's transaction in `inbox` (`None` without a message id), or how the
    /// delivery ended without the handler: answered from the inbox, an id the inbox cannot
    /// hold or that another request used, or the database failing.
    pub(super) async fn claim(
        &self,
        inbox: &Inbox,
        delivery: &mut InFlight<'_, T>,
    ) -> ControlFlow<Settle, Option<Transaction>> {
        let claimable = match self.claimable(delivery).await {
            ControlFlow::Continue(Some(claimable)) => claimable,
            ControlFlow::Continue(None) => return ControlFlow::Continue(None),
            ControlFlow::Break(settle) => return ControlFlow::Break(settle),
        };
        let claimed = inbox.claim(&claimable.message_id, &claimable.payload).await;
        ControlFlow::Break(match claimed {
            Ok(Claim::Mine(transaction)) => return ControlFlow::Continue(Some(transaction)),
            Ok(Claim::Answered(stored)) => {
                self.outputs.metrics.answered_from_inbox();
                self.answered(delivery, stored).await
            }
            Ok(Claim::Reused) => self.reused(delivery).await,
            Err(error) => self.inbox_failed(delivery, error).await,
        })
    }

    /// What the inbox claims for the request (`None` without a message id), or the dead
    /// letter of an id the inbox cannot hold.
    pub(super) async fn claimable(&self, delivery: &mut InFlight<'_, T>) -> ControlFlow<Settle, Option<Claimable>> {
        let Some(id) = &delivery.meta.message_id else {
            return ControlFlow::Continue(None);
        };
        if let Some(why) = inbox::message_id_problem(id) {
            return ControlFlow::Break(
                delivery.dead_letter(Failure::new(FailureKind::Decode, code::BAD_HEADER, why)).await,
            );
        }
        let payload = delivery.message().payload.clone();
        ControlFlow::Continue(Some(Claimable { message_id: id.clone(), payload, codec: delivery.meta.codec }))
    }

    /// The request was answered before: the stored reply again, without the handler.
    pub(super) async fn answered(&self, delivery: &mut InFlight<'_, T>, stored: Stored) -> Settle {
        debug!("Answered before; replying from the inbox.");
        // In the codec it was stored in, whatever this copy says.
        delivery.meta.codec = Codec::of_content_type(&stored.content_type).unwrap_or(delivery.meta.codec);
        delivery.reply(stored.payload.into()).await
    }

    /// Another request was answered under the request's message id.
    pub(super) async fn reused(&self, delivery: &mut InFlight<'_, T>) -> Settle {
        let why = "another request was answered under this courier-message-id; send a new id";
        delivery.dead_letter(Failure::new(FailureKind::Permanent, code::DUPLICATE_MESSAGE_ID, why)).await
    }

    /// Commit `reply` (the encoded payload, when the rounds ended in one) with the claim,
    /// or roll the transaction back when there is none. A failed commit ends the delivery.
    pub(super) async fn commit(
        &self,
        delivery: &mut InFlight<'_, T>,
        transaction: Transaction,
        reply: Option<&[u8]>,
    ) -> ControlFlow<Settle> {
        let Some(payload) = reply else {
            transaction.rollback().await;
            return ControlFlow::Continue(());
        };
        let stored = Stored { content_type: delivery.meta.codec.content_type().to_owned(), payload: payload.to_vec() };
        match transaction.commit(&stored).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(error) => {
                transaction.rollback().await;
                ControlFlow::Break(self.inbox_failed(delivery, error).await)
            }
        }
    }

    /// The inbox's database failed (claiming or committing): a transient failure of the
    /// `inbox` dependency, so its circuit breaker opens while the database is down; or it
    /// refused what the request carries (SQLSTATE classes 22, 23): a permanent failure of
    /// the request that says nothing about the database.
    async fn inbox_failed(&self, delivery: &mut InFlight<'_, T>, error: InboxError) -> Settle {
        if error.is_refusal() {
            // The request's data, not the database's health: no breaker, no retry.
            return delivery
                .dead_letter(Failure::new(FailureKind::Permanent, code::INBOX_REFUSED, error.to_string()))
                .await;
        }
        warn!(%error, "The inbox's database failed; the request is retried later.");
        self.gate.record(Call::Failed, Some(INBOX));
        let error = HandlerError::transient(code::INBOX_UNAVAILABLE, error).dependency(INBOX);
        delivery.retry_later(Failure::from_handler(error)).await
    }
}
