//! One delivery in flight: the message, where it came from, its contract headers parsed,
//! its acker and its place in the worker's limits. Its outcomes are its methods, one file
//! each: `outputs.rs` (reply, retry later, dead-letter, park) and `settle.rs` (ack, or
//! back to the broker).

use std::{sync::Arc, time::Duration};

use super::{outputs::Outputs, slot::Slot};
use crate::{
    contract::headers::{self as h, BadHeader, RequestMeta},
    transport::{Acker, Delivery, Message, Source, Transport},
};

/// What a delivery holds until it is settled.
pub(super) struct Held<A> {
    /// Settles it, once.
    pub(super) acker: A,
    /// Its handler slot, then its place among the outputs awaiting a confirm.
    pub(super) slot: Slot,
}

/// A delivery from the moment it is taken until it is settled.
pub(super) struct InFlight<'p, T: Transport> {
    /// Where its outputs go, and what they are counted against.
    pub(super) outputs: &'p Outputs<T>,
    /// The message as received: what identifies it for redelivery counting.
    received: Arc<Message>,
    /// After retries in place: the copy carrying the round reached (`courier-attempt`),
    /// which its outputs carry.
    retried: Option<Message>,
    /// Where it was received from.
    pub(super) source: Source,
    /// Its contract headers, as far as they parse (updated by retries in place, and with
    /// this delivery's trace context).
    pub(super) meta: RequestMeta,
    /// Its acker and slot.
    pub(super) held: Held<T::Acker>,
    /// Handler invocations of this delivery's last round, for the failure's attempt count.
    pub(super) invocations: u32,
}

impl<'p, T: Transport> InFlight<'p, T> {
    /// Take `delivery`, and the first contract header of it that did not parse.
    pub(super) fn new(outputs: &'p Outputs<T>, delivery: Delivery<T::Acker>, slot: Slot) -> (Self, Option<BadHeader>) {
        let Delivery { message, source, acker, .. } = delivery;
        let (meta, bad) = RequestMeta::parse(&message.headers);
        let held = Held { acker, slot };
        let taken = Self { outputs, received: message, retried: None, source, meta, held, invocations: 0 };
        (taken, bad)
    }

    /// The message its outputs copy: as received, or as retried in place.
    pub(super) fn message(&self) -> &Message {
        self.retried.as_ref().unwrap_or(&self.received)
    }

    /// Its acker, once nothing more is published for it (the rest is dropped).
    pub(super) fn into_acker(self) -> T::Acker {
        self.held.acker
    }

    /// The message as received.
    pub(super) fn received(&self) -> &Message {
        &self.received
    }

    /// `--retry-in-place`: wait out `delay` here, its lane held and its handler slot lent
    /// to other deliveries, then become the next round: its invocations so far count as
    /// earlier attempts, and its outputs carry the next `courier-attempt`.
    pub(super) async fn wait_in_place(&mut self, delay: Duration) {
        self.held.acker.hold(true);
        self.held.slot.wait(delay).await;
        self.held.acker.hold(false);
        let meta = &mut self.meta;
        meta.earlier_attempts = meta.earlier_attempts.saturating_add(std::mem::take(&mut self.invocations));
        meta.first_failure_at.get_or_insert_with(std::time::SystemTime::now);
        meta.attempt = meta.attempt.saturating_add(1);
        let mut headers = self.received.headers.clone();
        headers.insert(h::ATTEMPT.into(), meta.attempt.to_string());
        self.retried =
            Some(Message { payload: self.received.payload.clone(), headers, key: self.received.key.clone() });
    }
}
