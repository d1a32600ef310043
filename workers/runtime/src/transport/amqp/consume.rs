//! Consuming a work queue: a consumer that follows the worker's intake and the prefetch,
//! and comes back (with backoff, redeclaring the topology) whenever its channel or
//! connection is lost.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures::StreamExt;
use lapin::{
    Channel, Consumer,
    options::{BasicCancelOptions, BasicConsumeOptions, BasicQosOptions},
    types::{FieldTable, ShortString},
};
use tokio::sync::watch;
use tracing::{info, warn};

use super::{AmqpAcker, AmqpTransport, convert, failed, prefetch, topology};
use crate::transport::{Delivery, Intake, Message, Source, Subscription, Topology, TransportError};

/// Reconnect backoff bounds for subscriptions: the first wait, and the longest.
const RECONNECT_MIN: Duration = Duration::from_millis(100);
/// See [`RECONNECT_MIN`].
const RECONNECT_MAX: Duration = Duration::from_secs(5);

impl AmqpTransport {
    /// [`Transport::subscribe`](crate::transport::Transport::subscribe): start consuming
    /// `topology`'s queue, failing if the broker refuses at once; later losses reconnect.
    pub(super) async fn consume(
        &self,
        topology: &Topology,
        prefetch: usize,
    ) -> Result<Subscription<AmqpAcker>, TransportError> {
        let limit = u16::try_from(prefetch).unwrap_or(u16::MAX);
        let prefetch = if topology.quorum { prefetch::Prefetch::fixed(limit) } else { prefetch::Prefetch::new(limit) };
        let (intake, wanted) = crate::transport::intake();
        let mut consuming = Consuming {
            transport: self.clone(),
            topology: topology.clone(),
            current: None,
            backoff: RECONNECT_MIN,
            prefetch,
            wanted,
            applied: Intake::Full,
            cancelled: false,
        };
        // Fail fast if the broker refuses the subscription at start-up; reconnect later.
        consuming.current = Some(self.start_consumer(topology, consuming.prefetch.current()).await?);
        self.shared.consuming.store(true, Ordering::Relaxed);
        // Dropping the stream drops the consumer, which cancels it at the broker.
        let stream = futures::stream::unfold(consuming, |mut consuming| async move {
            let delivery = consuming.next().await;
            Some((delivery, consuming))
        });
        Ok(Subscription::new(stream, intake))
    }

    /// Open a channel with the prefetch, (re)declare the topology and start consuming. The
    /// prefetch is channel-wide (`global`) on classic queues, so it can change while the
    /// consumer runs ([`prefetch`]); quorum queues take only a consumer's own.
    async fn start_consumer(&self, topology: &Topology, prefetch: u16) -> Result<(Channel, Consumer), TransportError> {
        let channel = self.channel().await?;
        let options = BasicQosOptions { global: !topology.quorum };
        channel.basic_qos(prefetch, options).await.map_err(failed)?;
        topology::declare(&channel, topology).await?;
        let queue = ShortString::try_new(topology.queue.clone()).map_err(TransportError::broker)?;
        let consumer = channel
            .basic_consume(queue, "".into(), BasicConsumeOptions::default(), FieldTable::default())
            .await
            .map_err(failed)?;
        info!(queue = %topology.queue, prefetch, "Consuming.");
        Ok((channel, consumer))
    }
}

/// A subscription's state between deliveries: the live consumer, or how long to wait
/// before the next attempt to get one.
struct Consuming {
    /// The transport, for its connection and its readiness flag.
    transport: AmqpTransport,
    /// What to consume and to redeclare on reconnect.
    topology: Topology,
    /// The prefetch, following the sizes of the deliveries (classic queues); fixed at
    /// `--concurrency` on quorum queues.
    prefetch: prefetch::Prefetch,
    /// The channel and consumer, while the connection lives.
    current: Option<(Channel, Consumer)>,
    /// Wait before the next reconnect attempt (doubles up to [`RECONNECT_MAX`]).
    backoff: Duration,
    /// What the worker takes ([`Intake`]).
    wanted: watch::Receiver<Intake>,
    /// The intake the current consumer follows.
    applied: Intake,
    /// The current consumer was cancelled: it yields what it holds, then ends.
    cancelled: bool,
}

impl Consuming {
    /// The next delivery, reconnecting (with backoff) for as long as it takes.
    async fn next(&mut self) -> Delivery<AmqpAcker> {
        loop {
            let wanted = *self.wanted.borrow_and_update();
            if self.current.is_none() {
                if wanted == Intake::Stopped {
                    if self.wanted.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                    continue;
                }
                match self.transport.start_consumer(&self.topology, self.limit(wanted)).await {
                    Ok(consumer) => {
                        self.current = Some(consumer);
                        self.applied = wanted;
                        self.backoff = RECONNECT_MIN;
                        self.transport.shared.consuming.store(true, Ordering::Relaxed);
                    }
                    Err(error) => {
                        self.pause(&error).await;
                        continue;
                    }
                }
            } else if wanted != self.applied && !self.cancelled {
                self.follow(wanted).await;
            }
            let Some((channel, consumer)) = self.current.as_mut() else { continue };
            let next = tokio::select! {
                next = consumer.next() => next,
                _ = self.wanted.changed(), if !self.cancelled => continue,
            };
            let error = match next {
                Some(Ok(delivery)) => {
                    if !self.topology.quorum
                        && self.applied == Intake::Full
                        && let Some(prefetch) = self.prefetch.observe(delivery.data.len())
                    {
                        let options = BasicQosOptions { global: true };
                        if let Err(error) = channel.basic_qos(prefetch, options).await {
                            warn!(%error, prefetch, "Could not change the prefetch.");
                        }
                    }
                    let message = Message {
                        payload: delivery.data.into(),
                        headers: convert::headers(&delivery.properties),
                        key: None,
                    };
                    return Delivery {
                        message: Arc::new(message),
                        source: Source { queue: self.topology.queue.as_str().into(), position: None },
                        redelivered: delivery.redelivered,
                        acker: AmqpAcker { acker: Some(delivery.acker), _channel: channel.clone() },
                    };
                }
                // Cancelled by us: what it held is handed out; start afresh as the intake says.
                None if self.cancelled => {
                    self.current = None;
                    self.cancelled = false;
                    continue;
                }
                Some(Err(error)) => failed(error),
                None => TransportError::Unavailable("the broker cancelled the consumer".into()),
            };
            // Unacked deliveries of the lost channel come back from the broker.
            self.current = None;
            self.cancelled = false;
            self.pause(&error).await;
        }
    }

    /// The prefetch for `intake`.
    fn limit(&self, intake: Intake) -> u16 {
        match intake {
            Intake::Full => self.prefetch.current(),
            Intake::Probe(probes) => probes.clamp(1, self.prefetch.current().max(1)),
            Intake::Stopped => 0,
        }
    }

    /// Make the live consumer follow a new intake. Stopped: cancel it, so the broker sends
    /// nothing more (what it already sent is handed out and given back by the worker). A
    /// new limit: a channel-wide `basic.qos` (classic queues); a quorum queue's consumer
    /// keeps the prefetch it started with, so it is cancelled and started again.
    async fn follow(&mut self, wanted: Intake) {
        let Some((channel, consumer)) = self.current.as_ref() else { return };
        let prefetch = self.limit(wanted);
        let result = if wanted == Intake::Stopped || self.topology.quorum {
            self.cancelled = true;
            channel.basic_cancel(consumer.tag(), BasicCancelOptions::default()).await
        } else {
            channel.basic_qos(prefetch, BasicQosOptions { global: true }).await
        };
        self.applied = wanted;
        match result {
            Ok(()) => info!(queue = %self.topology.queue, ?wanted, "Consumer follows the circuit breaker."),
            // The channel is gone: the next turn sees the consumer end and reconnects.
            Err(error) => warn!(%error, ?wanted, "Could not change the consumer."),
        }
    }

    /// Report the consumer lost, then wait out the backoff and double it.
    async fn pause(&mut self, error: &TransportError) {
        self.transport.shared.consuming.store(false, Ordering::Relaxed);
        warn!(%error, queue = %self.topology.queue, retry_in = ?self.backoff, "Consumer interrupted; reconnecting.");
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(RECONNECT_MAX);
    }
}
