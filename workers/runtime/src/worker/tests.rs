//! [`run`] from outside: what a worker leaves behind when it cannot start.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use super::*;
use crate::{
    config::InboxSettings,
    handler::{Context, HandlerError},
    inbox::Bounds,
    transport::{Confirm, Message, PublishError, Subscription, Topology, memory::MemoryBroker},
};

/// The start-up step the broker refuses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refuse {
    /// Nothing: the inbox's database refuses the worker first.
    Nothing,
    /// Declaring the topology.
    Declare,
    /// Subscribing to the work queue.
    Subscribe,
}

/// The in-memory broker, refusing one start-up step.
#[derive(Clone, Debug)]
struct Refusing {
    /// Where everything else goes.
    broker: MemoryBroker,
    /// The step it refuses.
    refuse: Refuse,
    /// Counts this transport's handles: once `run` has returned, only the test's is left.
    handles: Arc<()>,
}

impl Refusing {
    fn refused(&self, step: Refuse) -> Result<(), TransportError> {
        if self.refuse == step {
            return Err(TransportError::TopologyMismatch(format!("{step:?} refused by the test")));
        }
        Ok(())
    }
}

impl Transport for Refusing {
    type Acker = <MemoryBroker as Transport>::Acker;

    async fn declare(&self, topology: &Topology) -> Result<(), TransportError> {
        self.refused(Refuse::Declare)?;
        self.broker.declare(topology).await
    }

    async fn subscribe(
        &self,
        topology: &Topology,
        prefetch: usize,
    ) -> Result<Subscription<Self::Acker>, TransportError> {
        self.refused(Refuse::Subscribe)?;
        self.broker.subscribe(topology, prefetch).await
    }

    async fn send(&self, destination: &str, message: &Message) -> Result<Confirm, PublishError> {
        self.broker.send(destination, message).await
    }
}

/// A handler the refused worker never gets to call.
#[derive(Clone, Debug)]
struct Unused;

impl Handler for Unused {
    type Request = serde_json::Value;
    type Reply = serde_json::Value;
    const NAME: &'static str = "refused";
    const REQUEST_SCHEMA: &'static str = "{}";

    async fn handle(&self, request: Self::Request, _: &Context) -> Result<Self::Reply, HandlerError> {
        Ok(request)
    }
}

/// A local address nothing listens on (just now).
fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("its address")
}

/// A worker that cannot start (its inbox's database, its topology or its subscription
/// refused) returns the error and leaves nothing running: its HTTP endpoints no longer
/// listen, and no task of it holds the transport, whose last handle closes the broker
/// connections.
#[tokio::test]
async fn a_worker_that_cannot_start_leaves_nothing_running() {
    for refuse in [Refuse::Nothing, Refuse::Declare, Refuse::Subscribe] {
        let addr = free_addr();
        let mut settings = Settings::defaults(Unused::NAME);
        settings.http_addr = Some(addr);
        if refuse == Refuse::Nothing {
            // Port 1 on the loopback: refused at once.
            let bounds = Bounds { timeout: Duration::from_secs(5), connections: 1 };
            let url = "postgres://courier@127.0.0.1:1/courier".to_owned();
            settings.inbox = Some(InboxSettings { url, retention: Duration::from_secs(60), bounds });
        }
        let transport = Refusing { broker: MemoryBroker::new(), refuse, handles: Arc::default() };
        let outcome = run(settings, transport.clone(), Unused, std::future::pending()).await;
        match (refuse, &outcome) {
            (Refuse::Nothing, Err(WorkerError::Inbox(_))) | (_, Err(WorkerError::Transport(_))) => {}
            _ => panic!("{refuse:?}: {outcome:?}"),
        }
        let connected = tokio::net::TcpStream::connect(addr).await;
        assert!(connected.is_err(), "{refuse:?}: the HTTP endpoints still listen after `run` returned");
        assert_eq!(Arc::strong_count(&transport.handles), 1, "{refuse:?}: a task of the worker holds the transport");
    }
}
